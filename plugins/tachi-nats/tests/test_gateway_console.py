"""``tachi gateway``: the console's recordings, audit trail and pinned transport
keys, in a real Chromium (Playwright) with real daemons and a real nats-server.

Each test starts its own NATS and daemons; the browser is one per module."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats_support import NatsServer, fleet, wait_until

from tachi import protocol
from tachi.testing import DaemonProcess

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.xdist_group("heavy")

#: What a peer may put in a record: markup that would run if written as HTML.
PAYLOAD = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def browser(chromium_browser: Browser) -> Browser:
    return chromium_browser


def _serving(daemon: DaemonProcess) -> bool:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return any(x["transport"] == "nats" and x.get("connected") for x in status["listeners"])


def _nats_fingerprint(daemon: DaemonProcess) -> str:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return next(x["fingerprint"] for x in status["listeners"] if x["transport"] == "nats")


class Gateway:
    """``tachi gateway`` as a real process, with the [fleet] config of ``daemon``."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.proc = subprocess.Popen(
            daemon.tachi_argv("gateway", "--listen", "127.0.0.1:0"),
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.proc.stderr.read()
        self.base = self.url.split("/#", 1)[0]
        self.key = self.url.split("#key=", 1)[1]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def console(nats_server: NatsServer, fleet_daemons: Any) -> Iterator[Any]:
    """``start(hosts...)``: daemons for ``hosts`` serving through NATS, and a
    gateway with the first one's config."""
    made: list[Gateway] = []

    def start(*names: str) -> tuple[Gateway, dict[str, DaemonProcess]]:
        hosts = {h: fleet_daemons(nats_server.url, h) for h in names}
        for d in hosts.values():
            wait_until(lambda d=d: _serving(d), 10, "serving through NATS")
        made.append(Gateway(hosts[names[0]]))
        return made[-1], hosts

    try:
        yield start
    finally:
        for g in made:
            g.stop()


def _page(browser: Browser, url: str) -> Page:
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(15000)
    page.goto(url)
    return page


def record_something(daemon: DaemonProcess, text: str) -> dict[str, Any]:
    """A finished recording of a `cat` session that echoed ``text``."""
    sid = daemon.new("cat")["id"]
    daemon.run("record", "start", sid, check=True)
    with daemon.client() as client:
        client.send(sid, f"{text}\n")
    rec = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)[-1]
    path = Path(rec["path"])
    wait_until(lambda: path.exists() and text.encode() in path.read_bytes(), 10, "recorded")
    stopped = json.loads(daemon.run("record", "stop", sid, "--json", check=True).stdout)
    return {**stopped, "bytes": path.read_bytes(), "session": sid}


def _in_thread(coro: Any) -> Any:
    """``asyncio.run(coro)`` in a thread of its own: Playwright's sync API keeps
    an event loop running in the test's thread."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(30)


def _kv_put(url: str, bucket: str, key: str, value: bytes) -> None:
    async def put() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            await kv.put(key, value)
        finally:
            await nc.close()

    _in_thread(put())


def _fleet_list(gateway: Gateway, want: Any, timeout: float = 10) -> dict[str, Any]:
    """The first list the gateway pushes on /fleet for which ``want`` is true."""
    from websockets.sync.client import connect

    with connect(gateway.base.replace("http", "ws") + "/fleet", open_timeout=10) as ws:
        ws.send(json.dumps({"key": gateway.key}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "hosts" in doc and want(doc):
                return doc
    raise AssertionError("the gateway never pushed the expected list")


def _attach_through(gateway: Gateway, session: str, token: str) -> dict[str, Any]:
    """What the gateway answers a browser terminal's request for ``session``
    (hello with ``token`` first, as the terminal page sends it)."""
    from websockets.sync.client import connect

    with connect(gateway.base.replace("http", "ws") + "/ws", open_timeout=10) as ws:
        ws.send(
            protocol.encode_control(
                {"id": 1, "op": "hello", "args": {"version": 1, "token": token}}
            )
        )
        ws.recv(timeout=10)  # the gateway's provisional answer
        ws.send(
            protocol.encode_control({"id": 2, "op": "session.get", "args": {"session": session}})
        )
        while True:
            frames = protocol.FrameDecoder().feed(ws.recv(timeout=20))
            for frame in frames:
                control = protocol.decode_control(frame.payload)
                if control.get("id") == 2:
                    return control


def test_the_console_lists_and_plays_recordings_also_of_a_host_that_is_gone(
    console: Any, browser: Browser, nats_server: NatsServer
):
    gateway, hosts = console("build-1", "old-box")
    rec = record_something(hosts["old-box"], "made-on-old-box at night")
    name = f"old-box/{rec['id']}"
    wait_until(
        lambda: any(r["name"] == name for r in fleet(hosts["build-1"], "record", "ls", "--json")),
        15,
        "uploaded",
    )
    # The host goes, with its state directory: the recording is in the object store.
    hosts["old-box"].stop()
    shutil.rmtree(hosts["old-box"].state_dir)

    page = _page(browser, gateway.url)
    row = page.wait_for_selector(f'#recordings tr[data-recording="{name}"]')
    cells = [c.text_content() for c in row.query_selector_all("td")]
    assert cells[:3] == ["old-box", rec["id"], rec["session"]]
    assert cells[3].startswith("20") and cells[4].endswith(" s")  # started, duration
    assert cells[5] == f"{len(rec['bytes'])} B"
    row.query_selector("button").click()
    page.wait_for_function(
        "() => document.getElementById('player').textContent.includes('made-on-old-box')"
    )
    assert "matches its record.stop" in page.text_content("#player-status")

    # The object replaced in the store (by whoever may write it): not played.
    async def replace() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        obs = await nc.jetstream().object_store("tachi-recordings")
        await obs.put(name, rec["bytes"].replace(b"made-on-old-box", b"forged-on-relay"))
        await nc.close()

    _in_thread(replace())  # Playwright's loop runs in this thread
    row.query_selector("button").click()
    page.wait_for_function(
        "() => document.getElementById('player-status').className.includes('bad')"
    )
    status = page.text_content("#player-status")
    assert "does not match the SHA-256 in host old-box's record.stop" in status
    assert "forged-on-relay" not in page.text_content("#player")


def test_the_audit_trail_is_filtered_newest_first_and_shown_as_text(console: Any, browser: Browser):
    gateway, hosts = console("build-1", "build-2")
    # A peer's text in an audit record: session.create records the command.
    made = hosts["build-2"].new("sh", "-c", f"sleep 60 # {PAYLOAD}", name="evil")
    other = hosts["build-2"].new("sleep", "60")
    wait_until(
        lambda: any(
            PAYLOAD in json.dumps(r)
            for r in fleet(hosts["build-1"], "audit", "--json", "--host", "build-2")
        ),
        15,
        "the record in the stream",
    )
    page = _page(browser, gateway.url)
    page.wait_for_selector('#audit tr[data-host="build-2"]')
    page.fill("#audit-host", "build-2")
    page.fill("#audit-session", "evil")  # a name: the ids its session.create gave
    page.click("#audit-filters button")
    page.wait_for_function(
        "() => document.getElementById('audit-status').textContent.includes('matching')"
    )
    rows = page.evaluate(
        """() => [...document.querySelectorAll('#audit tbody tr')].map(
            (tr) => [...tr.children].map((td) => td.textContent))"""
    )
    assert rows and {r[1] for r in rows} == {"build-2"} and {r[4] for r in rows} == {made["id"]}
    assert other["id"] not in json.dumps(rows)
    # The markup is shown as text: no element made of it, nothing ran.
    assert any(PAYLOAD in r[8] for r in rows)
    assert page.locator("#audit img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    # By user: the principal of these records, then one nobody is.
    principal = rows[0][5]
    page.fill("#audit-session", "")
    page.fill("#audit-user", principal)
    page.click("#audit-filters button")
    page.wait_for_function(
        f"() => document.querySelectorAll('#audit tbody tr').length > {len(rows)}"
    )
    times = page.evaluate(
        "() => [...document.querySelectorAll('#audit tbody tr td:first-child')]"
        ".map((td) => td.textContent)"
    )
    assert times == sorted(times, reverse=True)  # newest first
    page.fill("#audit-user", "nobody-at-all")
    page.click("#audit-filters button")
    page.wait_for_function(
        "() => document.getElementById('audit-status').textContent.startsWith('0 of 0')"
    )
    assert page.locator("#audit tbody tr").count() == 0


def test_the_audit_view_pages_through_older_records_without_gaps(
    console: Any, monkeypatch: pytest.MonkeyPatch
):
    """Function level: PAGE records at a time, each page older than the last."""
    from tachi_nats import gateway as gateway_mod
    from tachi_nats import settings as settings_mod

    _, hosts = console("build-1", "build-2")
    for _ in range(3):
        hosts["build-2"].new("true")

    # The records reach the stream within the shipper's poll (0.5 s): wait until
    # they have, and until no more come (two polls apart, the same).
    def shipped() -> list[dict[str, Any]] | None:
        first = fleet(hosts["build-1"], "audit", "--json", "--host", "build-2")
        time.sleep(1.2)
        again = fleet(hosts["build-1"], "audit", "--json", "--host", "build-2")
        return again if len(again) >= 7 and len(again) == len(first) else None

    want = wait_until(shipped, 20, "build-2's records in the stream")
    monkeypatch.setattr(gateway_mod, "PAGE", 3)
    monkeypatch.setenv("TACHI_HOME", str(hosts["build-1"].home))
    settings = settings_mod.load()

    async def pages() -> list[dict[str, Any]]:
        from tachi_nats import nats_io

        g = gateway_mod.Gateway(settings, "127.0.0.1", 0, "k")
        nc = await nats_io.connect(settings)
        g.js = nc.jetstream(timeout=5)
        out, before = [], None
        try:
            for _ in range(50):
                page = await g.audit(host="build-2", before=before)
                out.append(page)
                if not page["more"]:
                    break
                last = page["records"][-1]
                before = [last["time"], last["host"], last["seq"]]
        finally:
            await nc.close()
        return out

    got = _in_thread(pages())
    assert all(len(p["records"]) <= 3 for p in got) and not got[-1]["more"]
    seqs = [r["seq"] for p in got for r in p["records"]]
    # Newest first, each record once, none left out.
    assert seqs == sorted({r["seq"] for r in want}, reverse=True)[: len(seqs)]
    assert len(seqs) >= len(want)


def test_the_gateway_pins_the_transport_key_each_host_publishes(
    console: Any, nats_server: NatsServer
):
    gateway, hosts = console("build-1", "build-2")
    build2 = hosts["build-2"]
    published = _fleet_list(gateway, lambda d: any(h["host"] == "build-2" for h in d["hosts"]))
    entry = next(h for h in published["hosts"] if h["host"] == "build-2")
    # What the registry says is the key the daemon answers connects with.
    assert entry["transportKey"] == _nats_fingerprint(build2)
    made = build2.new("sleep", "60")
    _fleet_list(gateway, lambda d: any(s["id"] == made["id"] for s in d["sessions"]))
    token = json.loads(build2.run("token", "create", "--json", check=True).stdout)["token"]
    reached = _attach_through(gateway, made["id"], token)
    assert reached["ok"] and reached["result"]["id"] == made["id"], reached

    # The registry now names another key than the daemon holds (as if another
    # daemon, or a relay, answered for build-2 with its own key): refused.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    other = X25519PrivateKey.generate().public_key()
    raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    forged = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    info = {k: v for k, v in entry.items() if k not in ("status", "heartbeat", "sessions")}
    info["host"] = "build-2"
    info["transportKey"] = forged
    _kv_put(nats_server.url, "tachi-hosts", "info.build-2", json.dumps(info).encode())
    _fleet_list(
        gateway,
        lambda d: any(h.get("transportKey") == forged for h in d["hosts"]),
    )
    refused = _attach_through(gateway, made["id"], token)
    assert refused["ok"] is False and refused["error"]["code"] == "permission_denied"
    message = refused["error"]["message"]
    assert f"not the pinned {forged}" in message and entry["transportKey"] in message

    # A host publishing no key is not reached either (no trust on first use).
    del info["transportKey"]
    _kv_put(nats_server.url, "tachi-hosts", "info.build-2", json.dumps(info).encode())
    _fleet_list(
        gateway,
        lambda d: any(h["host"] == "build-2" and "transportKey" not in h for h in d["hosts"]),
    )
    refused = _attach_through(gateway, made["id"], token)
    assert refused["error"]["code"] == "permission_denied"
    assert "publishes no transport key" in refused["error"]["message"]
