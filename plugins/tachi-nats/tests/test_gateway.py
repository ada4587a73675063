"""``tachi gateway``: the fleet's web console in a real Chromium (Debian's,
driven by Playwright), real daemons on two hosts, a real nats-server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nats_support import NatsServer, wait_until

from tachi.testing import DaemonProcess

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page

# Chromium is heavy on 2 cores: these run one after another with other heavy tests.
pytestmark = pytest.mark.xdist_group("heavy")


@pytest.fixture(scope="module")
def browser(chromium_browser: Browser) -> Browser:
    return chromium_browser


def _serving(daemon: DaemonProcess) -> bool:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return any(x["transport"] == "nats" and x.get("connected") for x in status["listeners"])


@pytest.fixture
def gateway(nats_server: NatsServer, fleet_daemons: Any) -> Iterator[dict[str, Any]]:
    """Two hosts and a gateway (run with build-1's config: its [fleet] settings)."""
    hosts = {h: fleet_daemons(nats_server.url, h) for h in ("build-1", "build-2")}
    for d in hosts.values():
        wait_until(lambda d=d: _serving(d), 10, "serving through NATS")
    proc = subprocess.Popen(
        hosts["build-1"].tachi_argv("gateway", "--listen", "127.0.0.1:0"),
        env=hosts["build-1"].env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "#key=" in url, proc.stderr.read()
        yield {"url": url, "hosts": hosts, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _page(browser: Browser) -> Page:
    context = browser.new_context(viewport={"width": 1000, "height": 600})
    page = context.new_page()
    page.set_default_timeout(15000)
    return page


def _sessions(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("() => window.tachiFleet().sessions")


def _screen_text(page: Page) -> str:
    return page.evaluate(
        """() => { const b = window.tachiTerm.buffer.active; const out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out.join("\\n"); }"""
    )


def test_the_console_lists_hosts_live_and_opens_a_session_through_nats(
    gateway: dict[str, Any], browser: Browser
):
    build2: DaemonProcess = gateway["hosts"]["build-2"]
    page = _page(browser)
    page.goto(gateway["url"])
    page.wait_for_selector('#hosts tr[data-host="build-2"]')
    assert page.locator('#hosts tr[data-host="build-1"]').count() == 1
    assert "#key=" not in page.url  # the key leaves the address bar
    # A session made on another host shows up without a reload, within 2 s.
    made = build2.new("bash", "--norc", name="remote-one")
    started = time.monotonic()
    page.wait_for_selector(f'#sessions tr[data-session="{made["id"]}"]', timeout=5000)
    assert time.monotonic() - started < 2.0
    row = next(s for s in _sessions(page) if s["id"] == made["id"])
    assert row["host"] == "build-2" and row["name"] == "remote-one"
    # Open it in the browser terminal with a token of build-2: through NATS.
    token = json.loads(build2.run("token", "create", "--json", check=True).stdout)["token"]
    page.fill("#token", token)
    link = page.locator(f'#sessions tr[data-session="{made["id"]}"] a').get_attribute("href")
    assert link == f"/s/{made['id']}#token={token}"
    terminal = _page(browser)
    terminal.goto(gateway["url"].split("/#", 1)[0] + link)
    terminal.wait_for_function("() => window.tachiState && window.tachiState().connected")
    terminal.locator("#terminal").click()
    terminal.keyboard.type("echo via-gateway-$((6*7))\n")
    deadline = time.monotonic() + 15
    while "via-gateway-42" not in _screen_text(terminal) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "via-gateway-42" in _screen_text(terminal)
    assert "via-gateway-42" in build2.run("capture", made["id"], check=True).stdout
    audit = json.loads(build2.run("audit", "--json", check=True).stdout)
    assert any(r["source"].startswith("nats:") for r in audit if r["action"] == "session.attach")


def test_a_wrong_gateway_key_shows_nothing(gateway: dict[str, Any], browser: Browser):
    gateway["hosts"]["build-2"].new("sleep", "60", name="secret-name")
    page = _page(browser)
    page.goto(gateway["url"].split("#", 1)[0] + "#key=wrong")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('key')")
    assert "wrong gateway key" in page.text_content("#status")
    assert "secret-name" not in page.content()
