"""Floodgate: an embedded rate limiter for Python web services.

>>> from floodgate import Limiter
>>> limiter = Limiter("100/minute", burst=20)
>>> limiter.check("ip:203.0.113.7").allowed
True
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from . import errors
from ._floodgate import Decision, Engine, Limiter, RedisLimiter, Verdict, __version__, error_codes
from .errors import *  # noqa: F403

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]]]


async def check_async(limiter: RedisLimiter, key: Union[str, bytes], cost: int = 1) -> Decision:
    """``await limiter.check_async(key, cost)``: the round trip is pipelined on one
    multiplexed connection by a tokio worker, so the event loop never waits."""
    return await limiter.check_async(key, cost)


async def check_request_async(
    engine: Engine,
    *,
    method: str,
    path: str,
    client_ip: Optional[str] = None,
    headers: Optional[Headers] = None,
    now: Optional[float] = None,
    body: Optional[bytes] = None,
) -> Verdict:
    """``engine.check_request`` that never blocks the event loop.

    An in-memory engine answers inline (well under a microsecond). An engine on
    Redis (``engine.blocking``) decides with ``engine.check_request_async``: the
    round trips run on a tokio worker over one multiplexed connection, and no
    thread waits for them. (A replay with ``now`` runs in the default thread
    pool: it is for tests and simulations, not for serving.)
    """
    if not engine.blocking:
        return engine.check_request(method=method, path=path, client_ip=client_ip, headers=headers, now=now, body=body)
    if now is None:
        return await engine.check_request_async(method=method, path=path, client_ip=client_ip, headers=headers, body=body)
    call = functools.partial(
        engine.check_request, method=method, path=path, client_ip=client_ip, headers=headers, now=now, body=body
    )
    return await asyncio.get_running_loop().run_in_executor(None, call)


__all__ = [
    "Decision",
    "Engine",
    "Limiter",
    "RedisLimiter",
    "Verdict",
    "check_async",
    "check_request_async",
    "error_codes",
    "__version__",
    *errors.__all__,
]
