"""The browser terminal in a real Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import Browser, Page
from ws_support import Proxy, Remote, start_remote

# Chromium is heavy on 2 cores: these run one after another with other heavy tests.
pytestmark = pytest.mark.xdist_group("heavy")


@pytest.fixture(scope="module")
def browser(chromium_browser: Browser) -> Browser:
    return chromium_browser


def _page(browser: Browser) -> Page:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1000, "height": 600})
    page = context.new_page()
    page.set_default_timeout(15000)
    return page


def _share_link(remote: Remote, sid: str, role: str) -> str:
    result = remote.daemon.run("share", sid, "--role", role, check=True)
    assert result.stdout.count("\n") == 1 and "tachi attach" in result.stdout  # the command alone
    match = re.search(r"^browser: (\S+)$", result.stderr, re.M)
    assert match, result.stderr
    return match.group(1)


def _screen_text(page: Page) -> str:
    return page.evaluate(
        """() => { const b = window.tachiTerm.buffer.active; const out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out.join("\\n"); }"""
    )


def _wait_text(page: Page, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _screen_text(page)
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never shown; screen:\n{_screen_text(page)}")


def _connected(page: Page) -> None:
    page.wait_for_function("() => window.tachiState && window.tachiState().connected")


def test_type_see_output_and_resize_the_pty(remote: Remote, browser: Browser):
    s = remote.daemon.new("bash", "--norc", name="web")
    url = _share_link(remote, s["id"], "collaborator")
    assert url.startswith("https://127.0.0.1:") and f"/s/{s['id']}#token=tachi_" in url
    page = _page(browser)
    page.goto(url)
    _connected(page)
    assert "token=" not in page.url  # the fragment is dropped from the address bar
    assert page.inner_text("#name") == "web"
    assert page.inner_text("#role") == "collaborator"
    page.click("#terminal")
    page.keyboard.type("echo typed-$((40+2))\n")
    _wait_text(page, "typed-42")
    page.set_viewport_size({"width": 640, "height": 360})
    page.wait_for_timeout(300)
    rows, cols = page.evaluate("() => [window.tachiTerm.rows, window.tachiTerm.cols]")
    page.keyboard.type("stty size\n")
    _wait_text(page, f"{rows} {cols}")
    listed = json.loads(remote.daemon.run("get", s["id"], "--json", check=True).stdout)
    assert (listed["pty"]["rows"], listed["pty"]["cols"]) == (rows, cols)


def test_an_observer_page_is_read_only(remote: Remote, browser: Browser):
    s = remote.daemon.new("cat")
    page = _page(browser)
    page.goto(_share_link(remote, s["id"], "observer"))
    _connected(page)
    assert "read-only" in page.inner_text("#role")
    page.click("#terminal")
    page.keyboard.type("observer-typed\n")
    remote.daemon.run("send", s["id"], "owner-typed\n", check=True)
    _wait_text(page, "owner-typed")
    screen = remote.daemon.run("capture", s["id"], check=True).stdout
    assert "owner-typed" in screen and "observer-typed" not in screen


def test_the_page_resumes_after_the_connection_is_cut(tachi_home, browser: Browser):
    proxy = Proxy()
    origin = f"https://127.0.0.1:{proxy.port}"
    r = start_remote(
        tachi_home, f'listen = "127.0.0.1:0"\ntls = "self-signed"\norigins = ["{origin}"]'
    )
    try:
        proxy.upstream = int(r.url.rsplit(":", 1)[1])
        s = r.daemon.new("bash", "--norc")
        link = _share_link(r, s["id"], "collaborator")
        page = _page(browser)
        page.goto(link.replace(r.url.replace("wss", "https"), origin))
        _connected(page)
        page.click("#terminal")
        page.keyboard.type("echo before-$((1+1))\n")
        _wait_text(page, "before-2")
        assert proxy.cut() >= 1
        r.daemon.run("send", s["id"], "for i in 1 2 3; do echo during-$i; done\n", check=True)
        text = _wait_text(page, "during-3")
        _connected(page)
        lines = text.splitlines()
        assert sum(line.strip() == "during-2" for line in lines) == 1, text
        assert sum(line.strip() == "before-2" for line in lines) == 1, text
    finally:
        proxy.close()
        r.daemon.stop()


def test_the_index_lists_sessions_and_a_recording_plays(remote: Remote, browser: Browser):
    s = remote.daemon.new("bash", "--norc", name="listed")
    remote.daemon.run("record", "start", s["id"], check=True)
    remote.daemon.run("send", s["id"], "echo recorded-$((2*3))\n", check=True)
    time.sleep(0.5)
    remote.daemon.run("record", "stop", s["id"], check=True)
    rec = json.loads(remote.daemon.run("record", "ls", "--json", check=True).stdout)[0]
    base = remote.url.replace("wss://", "https://")
    page = _page(browser)
    refused: list[str] = []  # what the page's Content-Security-Policy blocked
    page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    page.goto(f"{base}/#token={remote.token}")
    page.wait_for_selector(f"text={s['id']}")
    assert "listed" in page.inner_text("#sessions")
    page.goto(f"{base}/r/{rec['id']}#token={remote.token}")
    page.wait_for_function("() => window.tachiPlayer !== undefined")
    assert "events" in page.inner_text("#status")
    page.wait_for_selector(".ap-player")
    # Frames play: the recorded text is drawn and the clock moves past zero.
    page.wait_for_function(
        "() => (document.querySelector('.ap-term')?.textContent || '').includes('recorded-6')"
    )
    page.wait_for_function("async () => (await window.tachiPlayer.getCurrentTime()) > 0")
    assert refused == []


def test_a_viewer_smaller_than_the_session_sees_it_whole(remote: Remote, browser: Browser):
    """An observer's 640x400 page on a 153x48 session: the terminal takes the
    session's size (lines neither wrap nor pile up), and scrolls or scales."""
    script = (
        "printf '\\033[2J\\033[1;1HTOP-LEFT'; printf '\\033[48;142HBOTTOM-RIGHT';"
        " printf '\\033[20;1H%s' \"$(printf 'w%.0s' $(seq 150))\"; sleep 600"
    )
    s = remote.daemon.new("sh", "-c", script, rows=48, cols=153)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 640, "height": 400})
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(_share_link(remote, s["id"], "observer"))
    _connected(page)
    _wait_text(page, "BOTTOM-RIGHT")
    assert page.evaluate("() => [window.tachiTerm.cols, window.tachiTerm.rows]") == [153, 48]
    line = "(i) => window.tachiTerm.buffer.active.getLine(i).translateToString()"
    assert page.evaluate(line, 47)[141:153] == "BOTTOM-RIGHT"
    assert page.evaluate(line, 19).rstrip() == "w" * 150  # one line, not wrapped
    # Scroll (the default) shows the terminal at full size in a scrolling box...
    assert page.evaluate("() => document.getElementById('terminal').scrollWidth") > 640
    # ... and "scale" fits it to the window.
    page.click("#view")
    assert page.inner_text("#view") == "scale"
    width = page.evaluate("() => document.querySelector('.xterm').getBoundingClientRect().width")
    assert width <= 641
    # The observer's page never resized the session.
    assert remote.daemon.run("get", s["id"], "--json", check=True).stdout.count('"cols": 153') >= 1
    context.close()
