"""The sync and async clients offer the same API, method for method.

Why they are not generated from each other (httpcore's `unasync`): the sync
client is a blocking socket client that also plugs into a caller's own select
loop (`SessionConn.fileno()`, `handle_frame()`), which has no async twin, and
the async one is built on asyncio streams. What they share is not copied: the
protocol, the argument encoding and the waits' state live once in
`tachi.client.shared`, `tachi.client.runs` and `tachi.client.results`. This
test keeps the rest alike: a method added to one and not the other, or with
other argument names, fails here unless it is listed below with the reason.
"""

from __future__ import annotations

import inspect

import pytest

from tachi.client.aio import AsyncClient, AsyncSessionConn
from tachi.client.sync import Client, SessionConn

#: Where the two differ on purpose, and why.
ONLY_ASYNC = {
    "AsyncClient.connect": "an async constructor: Client(...) connects in __init__",
}
ONLY_SYNC = {
    "SessionConn.fileno": "for a caller's own select loop",
    "SessionConn.handle_frame": "for a caller's own select loop",
    "SessionConn.done": "for a caller's own select loop",
    "SessionConn.position": "for a caller's own select loop",
    "SessionConn.request": "for a caller's own select loop",
}
#: Methods whose arguments differ, and why.
OWN_ARGUMENTS = {
    "read": "async: bound the wait with asyncio.wait_for; sync: timeout= and size=",
    "wait": "async: bound the wait with asyncio.wait_for; sync: timeout=",
}


def _public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize(("sync", "aio"), [(Client, AsyncClient), (SessionConn, AsyncSessionConn)])
def test_the_sync_and_async_clients_offer_the_same_methods(sync: type, aio: type):
    ours, theirs = _public(sync), _public(aio)
    only_sync = {f"{sync.__name__}.{n}" for n in ours.keys() - theirs.keys()}
    only_async = {f"{aio.__name__}.{n}" for n in theirs.keys() - ours.keys()}
    assert only_sync <= ONLY_SYNC.keys(), only_sync - ONLY_SYNC.keys()
    assert only_async <= ONLY_ASYNC.keys(), only_async - ONLY_ASYNC.keys()
    for name in sorted(ours.keys() & theirs.keys()):
        a, b = ours[name], theirs[name]
        if not (callable(a) and callable(b)) or name in OWN_ARGUMENTS:
            continue
        assert list(inspect.signature(a).parameters) == list(inspect.signature(b).parameters), (
            f"{sync.__name__}.{name} and {aio.__name__}.{name} take different arguments"
        )
        assert (
            inspect.iscoroutinefunction(b)
            or inspect.isasyncgenfunction(b)
            or isinstance(inspect.getattr_static(aio, name), property)
        ), f"{aio.__name__}.{name} is not async"
