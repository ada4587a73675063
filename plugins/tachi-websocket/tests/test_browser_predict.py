"""Predictive echo in the browser terminal (issue 32), in a real Chromium."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Browser, Page
from test_browser import _connected, _page, _share_link, _wait_text, browser  # noqa: F401
from ws_support import Remote

pytestmark = pytest.mark.xdist_group("heavy")

#: Echoes each key 0.4 s late (the network's delay, without a network), or a
#: `*` for each (a password prompt: what was predicted never shows).
SLOW_ECHO = (
    "stty -echo; printf 'ready> '; while IFS= read -rsn1 c; do sleep 0.4; printf %s \"$c\"; done"
)
STARS = "stty -echo; printf 'ready> '; while IFS= read -rsn1 c; do printf '*'; done"


def _predictions(page: Page) -> list[dict[str, object]]:
    return page.evaluate("() => window.tachiPredictions()")


def _open(remote: Remote, browser: Browser, command: str, role: str, mode: str) -> Page:  # noqa: F811
    s = remote.daemon.new("bash", "--norc", "-c", command)
    page = _page(browser)
    page.add_init_script(f"localStorage.setItem('tachi-predict', '{mode}')")
    page.goto(_share_link(remote, s["id"], role))
    _connected(page)
    _wait_text(page, "ready>")
    page.click("#terminal")
    return page


def test_a_predicted_key_is_underlined_until_the_echo_confirms_it(
    remote: Remote,
    browser: Browser,  # noqa: F811
) -> None:
    page = _open(remote, browser, SLOW_ECHO, "collaborator", "on")
    assert page.inner_text("#predict") == "predict: on"
    page.keyboard.type("q")
    # Drawn before the echo came back: in the overlay, underlined, where the cursor is.
    (predicted,) = _predictions(page)
    cursor = page.evaluate(
        "() => { const b = tachiTerm.buffer.active; return [b.cursorX, b.cursorY + b.baseY]; }"
    )
    assert predicted == {"ch": "q", "x": cursor[0], "y": cursor[1]}
    span = page.locator(".tachi-predict span")
    assert span.inner_text() == "q"
    assert "underline" in span.evaluate("e => getComputedStyle(e).textDecorationLine")
    # The echo arrives: the overlay goes, and the terminal's own cell shows it, not underlined.
    page.wait_for_function("() => window.tachiPredictions().length === 0", timeout=5000)
    assert page.locator(".tachi-predict span").count() == 0
    cell = page.evaluate(
        f"""() => {{ const c = tachiTerm.buffer.active.getLine({cursor[1]}).getCell({cursor[0]});
        return [c.getChars(), c.isUnderline()]; }}"""
    )
    assert cell == ["q", 0]


def test_a_contradicted_prediction_is_dropped(remote: Remote, browser: Browser) -> None:  # noqa: F811
    page = _open(remote, browser, STARS, "collaborator", "on")
    page.keyboard.type("secret")
    _wait_text(page, "ready> ******")
    page.wait_for_function("() => window.tachiPredictions().length === 0", timeout=5000)
    assert page.locator(".tachi-predict span").count() == 0


def test_an_observer_never_predicts(remote: Remote, browser: Browser) -> None:  # noqa: F811
    page = _open(remote, browser, SLOW_ECHO, "observer", "on")
    assert page.inner_text("#predict") == "predict: off"
    assert page.locator("#predict").is_disabled()
    deadline = time.monotonic() + 1
    page.keyboard.type("abc")
    while time.monotonic() < deadline:  # what it would show, it shows at once
        assert _predictions(page) == []
        assert page.locator(".tachi-predict span").count() == 0
        time.sleep(0.05)
    assert page.evaluate("() => window.tachiState().predicting") is False
