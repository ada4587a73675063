"""A failing notification plugin is reported once, backed off, and never stops the others."""

from __future__ import annotations

import logging

import pluggy

import tachi
from tachi import hookspecs
from tachi.core.guarded_hooks import GuardedHook


class Broken:
    def __init__(self) -> None:
        self.calls = 0
        self.broken = True

    @tachi.hookimpl
    def tachi_audit_event(self, event):
        self.calls += 1
        if self.broken:
            raise OSError("collector unreachable")


class Working:
    def __init__(self) -> None:
        self.events: list[int] = []

    @tachi.hookimpl
    def tachi_audit_event(self, event):
        self.events.append(event["seq"])


def test_back_off_then_recovery(caplog):
    pm = pluggy.PluginManager("tachi")
    pm.add_hookspecs(hookspecs)
    broken, working = Broken(), Working()
    pm.register(broken, "broken")
    pm.register(working, "working")
    now = [0.0]
    hook = GuardedHook(pm.hook.tachi_audit_event, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tachi.plugins"):
        for seq in range(100):  # 100 records within 0.99 s
            now[0] = seq / 100
            hook(event={"seq": seq})
        assert working.events == list(range(100))  # the other plugin got every record
        assert broken.calls == 1  # then paused for 1 s
        now[0] = 1.0
        hook(event={"seq": 100})
        assert broken.calls == 2  # tried again, failed: next pause 2 s
        now[0] = 2.9
        hook(event={"seq": 101})
        assert broken.calls == 2
        broken.broken = False
        now[0] = 3.1
        hook(event={"seq": 102})
        assert broken.calls == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("plugin broken failed")]) == 1
    assert "OSError: collector unreachable" in messages[0]
    assert "works again" in messages[-1] and "2 failed and 100 skipped" in messages[-1]
