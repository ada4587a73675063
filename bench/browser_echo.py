"""Keystroke-to-paint in the browser terminal, measured in Chromium (bench/remote.py).

Debian's chromium, headless, driven by Playwright with the flags the tests use
(``tachi.testing.CHROMIUM_ARGS``). The page is the share link of
a ``bash --norc`` session at its prompt. For each printable key, a listener in
the page notes ``performance.now()`` at ``keydown``; a MutationObserver on the
terminal's rows and on the prediction overlay notices the character appear in
the DOM at the cursor's cell, whoever drew it (the session's echo, or the
prediction). Two figures per key: ``dom`` (keydown to the character in the
DOM) and ``frame`` (to the next animation frame after that). xterm.js puts
rows into the DOM inside an animation frame, painted at its end, so for the
echo ``dom`` is the paint and ``frame`` one frame late; a prediction enters
the DOM from the keydown task and is painted by the next frame, which
``frame`` is: read ``frame`` with prediction on, ``dom`` with it off.

Added latency: a TCP proxy on 127.0.0.1 that holds every chunk for RTT/2 in
each direction (no ``tc``: the machine is shared, and nothing else may slow down).
"""

from __future__ import annotations

import contextlib
import heapq
import re
import socket
import statistics
import threading
import time
from typing import Any

from tachi.testing import CHROMIUM_ARGS, chromium_path

#: Installed in the page before its scripts: the keydown-to-paint probe.
PROBE = """
// samples: [keydown to the character in the DOM, to the next animation frame], ms
window.__lat = { samples: [], pending: null };
document.addEventListener("keydown", (e) => {
  if (e.key.length !== 1 || !window.tachiTerm) return;
  const b = window.tachiTerm.buffer.active;
  // Predictions not yet confirmed sit right of the cursor: the next goes after them.
  const ahead = window.tachiPredictions ? window.tachiPredictions().length : 0;
  window.__lat.pending = { key: e.key, t0: performance.now(), x: b.cursorX + ahead,
    y: b.cursorY + b.baseY - b.viewportY, seen: false };
}, true);
function __drawn(p) {
  const mark = document.querySelector(`.tachi-predict span[data-x="${p.x}"]`);
  if (mark && mark.textContent === p.key) return true;
  const rows = document.querySelectorAll(".xterm-rows > div");
  const row = rows[p.y];
  return !!row && (row.textContent || "")[p.x] === p.key;
}
// The document does not exist yet when this runs.
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver(() => {
    const p = window.__lat.pending;
    if (!p || p.seen || !__drawn(p)) return;
    p.seen = true;
    const dom = performance.now() - p.t0;
    requestAnimationFrame(() => {
      window.__lat.samples.push([dom, performance.now() - p.t0]);
      window.__lat.pending = null;
    });
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
});
"""


class DelayProxy:
    """127.0.0.1:port → 127.0.0.1:upstream, every chunk held ``delay`` seconds each way."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.upstream = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                return
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        queue: list[tuple[float, int, bytes]] = []
        cond = threading.Condition()
        done = threading.Event()

        def send() -> None:
            with contextlib.suppress(OSError):
                while True:
                    with cond:
                        while not queue and not done.is_set():
                            cond.wait()
                        if not queue:
                            break
                        due, _, data = queue[0]
                        wait = due - time.monotonic()
                        if wait > 0:
                            cond.wait(wait)
                            continue
                        heapq.heappop(queue)
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        n = 0
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                with cond:
                    n += 1
                    heapq.heappush(queue, (time.monotonic() + self.delay, n, data))
                    cond.notify()
        done.set()
        with cond:
            cond.notify()

    def close(self) -> None:
        self._server.close()


def _share_url(env: Any, session: str, port: int | None) -> str:
    """The session's collaborator link, pointed at ``port`` (the delay proxy) if given."""
    import subprocess

    import run as harness

    res = subprocess.run(
        [*harness.TACHI, "share", session, "--role", "collaborator"],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"^browser: (\S+)$", res.stderr, re.M)
    if not match:
        raise RuntimeError(f"no browser link: {res.stderr}")
    url = match.group(1)
    if port is not None:
        url = re.sub(r"^https://127\.0\.0\.1:\d+", f"https://127.0.0.1:{port}", url)
    return url


def measure(page: Any, keys: int) -> list[list[float]]:
    """Type ``keys`` printable keys one at a time; [dom, frame] ms of each."""
    samples: list[list[float]] = []
    words = "the quick brown fox jumps over a lazy dog "
    typed = 0
    for i in range(keys):
        if typed >= 40:  # a fresh line before the prompt wraps (Ctrl-U is not measured)
            page.keyboard.press("Control+u")
            page.wait_for_timeout(300)
            typed = 0
        ch = words[i % len(words)]
        if ch == " ":
            ch = "x"
        before = page.evaluate("() => window.__lat.samples.length")
        page.keyboard.press(ch)
        typed += 1
        page.wait_for_function(f"() => window.__lat.samples.length > {before}", timeout=10000)
        samples.append(page.evaluate("() => window.__lat.samples[window.__lat.samples.length-1]"))
    return samples


def run(env: Any, rounds: int, keys: int, rtt_ms: float) -> dict[str, Any]:
    """Interleaved rounds of: loopback, and ``rtt_ms`` through the delay proxy with
    prediction off and on. Returns per system p50/p99 stats as bench/run.py does."""
    import run as harness
    from playwright.sync_api import sync_playwright

    proxy = env.proxy
    proxy.delay = rtt_ms / 2000
    proxy.upstream = int(env.url.rsplit(":", 1)[1])
    systems = {
        "loopback": (None, "off"),
        f"rtt{rtt_ms:.0f}": (proxy.port, "off"),
        f"rtt{rtt_ms:.0f}+predict": (proxy.port, "on"),
    }
    raw: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            for rnd in range(rounds):
                for system, (port, mode) in systems.items():
                    name = f"br{rnd}{len(raw[system])}{system.replace('+', '')}"
                    env.tachi("new", "-d", "--name", name, "--", "bash", "--norc")
                    ctx = browser.new_context(
                        ignore_https_errors=True, viewport={"width": 1000, "height": 600}
                    )
                    try:
                        page = ctx.new_page()
                        page.set_default_timeout(20000)
                        page.add_init_script(f"localStorage.setItem('tachi-predict', '{mode}')")
                        page.add_init_script(PROBE)
                        page.goto(_share_url(env, name, port))
                        page.wait_for_function(
                            "() => window.tachiState && window.tachiState().connected"
                        )
                        page.wait_for_timeout(500)
                        page.click("#terminal")
                        samples = measure(page, keys)
                        row = {}
                        for i, what in enumerate(("dom", "frame")):
                            values = [s[i] for s in samples]
                            row[f"{what}_p50_ms"] = statistics.median(values)
                            row[f"{what}_p99_ms"] = statistics.quantiles(values, n=100)[98]
                        raw[system].append(row)
                    except Exception as exc:  # one failing round is a finding, not the end
                        raw[system].append({"error": str(exc)[:300]})
                    finally:
                        ctx.close()
                        env.tachi("close", name, check=False)
        finally:
            browser.close()
    out: dict[str, Any] = {}
    for system, samples in raw.items():
        good = [s for s in samples if "error" not in s]
        out[system] = {"samples": samples}
        for key in good[0] if good else ():
            if good:
                out[system][key] = harness.stats([s[key] for s in good])
    return out
