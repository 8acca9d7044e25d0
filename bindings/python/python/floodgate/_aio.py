"""The Python half of ``RedisLimiter.check_async`` (the Rust half is ``src/aio.rs``).

Each event loop gets one inbox: the tokio worker queues finished checks in it and
writes a byte to a pipe the loop watches, and the loop's own thread settles the
futures, many per wake-up. No other thread touches the loop or the GIL for it.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Dict, Tuple

from ._floodgate import _Inbox


class _Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = _Inbox()
        self.pending: Dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        # No reference to the loop: it is this object's weak key.
        loop.add_reader(self.inbox.fileno(), self.drain)

    def drain(self) -> None:
        pending = self.pending
        for id_, decision, exc in self.inbox.drain():
            fut = pending.pop(id_, None)
            if fut is None or fut.done():  # cancelled meanwhile
                continue
            if exc is None:
                fut.set_result(decision)
            else:
                fut.set_exception(exc)


_dispatchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Dispatcher]" = weakref.WeakKeyDictionary()


def register() -> Tuple[asyncio.Future, int, _Inbox]:
    """A future on the running loop, its id, and the inbox that will settle it."""
    loop = asyncio.get_running_loop()
    d = _dispatchers.get(loop)
    if d is None:
        d = _dispatchers[loop] = _Dispatcher(loop)
    fut = loop.create_future()
    id_ = next(d.ids)
    d.pending[id_] = fut
    return fut, id_, d.inbox
