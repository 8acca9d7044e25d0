"""ASGI middleware (Starlette, FastAPI, any ASGI app).

    from floodgate import Engine
    from floodgate.asgi import FloodgateMiddleware
    app.add_middleware(FloodgateMiddleware, engine=Engine.from_file("policy.toml"),
                       trusted_proxies=["10.0.0.0/8"])

The engine sees what Starlette acts on: the decoded path it routes
(``scope["path"]``), the first copy of a repeated header, and the client address
from the one forwarding header the trusted proxy sets (``forwarded_header``,
default ``X-Forwarded-For``). Behind a proxy on a Unix socket (``--uds``), list
``"unix:"`` in ``trusted_proxies``. A request the engine cannot use (a method
that is not an HTTP token) is answered 400. A proxy that is not trusted is
warned of once (``validate=False`` turns that off; see ``_web.ProxyCheck``).
For a request a rule keyed by a body field meets (``key = "body:username"``,
``engine.reads_body``), the middleware reads the whole body first and gives it
back to the app; past ``MAX_BODY_BYTES`` it answers 413.

Settlement. When a rule with ``count``, ``cost_from = "response"`` or
``max_in_flight`` admitted the request (``verdict.needs_settle``), the
middleware settles it once the app is done: with the status of
``http.response.start``, after the last body chunk (streaming responses
included); 500 if the app raised before starting a response; 499 if the client
went away first. A ``Floodgate-Cost`` response header gives the real cost and is
removed from the response.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Sequence, Tuple

from . import check_request_async
from ._floodgate import Engine
from ._floodgate import BAD_REQUEST_BODY, TOO_LARGE_BODY
from ._web import (
    COST_HEADER,
    ProxyCheck,
    client_ip,
    networks,
    parse_cost,
    read_asgi_body,
    reads_bodies,
    router_path,
    settle_quietly_async,
    wanted_headers,
)
from .errors import InvalidRequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FloodgateMiddleware:
    """Decides every HTTP request with ``engine``; answers 429/403/401 with a JSON
    body and the verdict's headers, and adds the rate-limit headers to allowed
    responses. The check never blocks the event loop."""

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        trusted_proxies: Sequence[str] = (),
        forwarded_header: str = "x-forwarded-for",
        validate: bool = True,
    ) -> None:
        self.app = app
        self.engine = engine
        self.trusted = networks(trusted_proxies)
        self.forwarded_header = forwarded_header
        self._check = ProxyCheck(self.trusted, forwarded_header, validate)
        self._forwarded = forwarded_header.lower().encode("latin-1")
        # ASGI header names are lower-case bytes.
        self._wanted = frozenset(n.encode("latin-1") for n in wanted_headers(engine, forwarded_header))
        self._bodies = reads_bodies(engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else None
        if self._check.left > 0:
            self._check(peer, any(k == self._forwarded for k, _ in scope["headers"]))
        # The path Starlette routes: decoded, below the mount point.
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        target = router_path(path, scope.get("query_string", b"").decode("latin-1"))
        engine = self.engine
        headers: List[Tuple[str, str]] = []
        if self.trusted or engine.blocking:
            # The forwarding header (for a trusted proxy's peer) and, for the
            # async check, the headers the policy reads, decoded.
            wanted = self._wanted
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k in wanted]
        ip = client_ip(peer, headers, self.trusted, self.forwarded_header)
        body = None
        if self._bodies and engine.reads_body(scope["method"], target):
            # A rule keys on a body field (a login's username): the whole body,
            # given back to the app.
            body, receive = await read_asgi_body(receive)
            if body is None:
                await _answer(send, 413, TOO_LARGE_BODY, [])
                return
        try:
            if engine.blocking:  # a Redis store: off the event loop
                verdict = await check_request_async(
                    engine, method=scope["method"], path=target, client_ip=ip, headers=headers, body=body
                )
            else:
                # In memory, inline (about a microsecond): the engine reads the
                # headers it needs from the header list itself (the first copy
                # of a repeated header, as Starlette does) and, for a request
                # allowed with nothing to settle, returns only the headers to add.
                verdict = engine._check_middleware(scope["method"], target, ip, scope["headers"], True, body)
        except InvalidRequestError:
            await _answer(send, 400, BAD_REQUEST_BODY, [])
            return
        if type(verdict) is list:
            await self.app(scope, receive, _adding(send, verdict) if verdict else send)
            return
        extra = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in verdict.headers]
        if not verdict.allowed:
            await _answer(send, verdict.status, verdict.body, extra)
            return

        if not verdict.needs_settle:
            await self.app(scope, receive, _adding(send, extra) if extra else send)
            return
        await self._run_and_settle(scope, receive, send, verdict, extra)

    async def _run_and_settle(self, scope: Scope, receive: Receive, send: Send, verdict: Any, extra: list) -> None:
        """Runs the app, then settles ``verdict`` with how the response ended."""
        status = 0
        cost: Optional[float] = None
        cost_name = COST_HEADER.encode()

        async def send_and_watch(message: Message) -> None:
            nonlocal status, cost
            if message["type"] == "http.response.start":
                message = dict(message)
                status = int(message["status"])
                kept = []
                for name, value in message.get("headers", []):
                    if name.lower() == cost_name:
                        cost = parse_cost(value)
                    else:
                        kept.append((name, value))
                message["headers"] = [*kept, *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            # 499: the client went away before any response (nginx's code).
            await settle_quietly_async(self.engine, verdict, status or 499, cost)


def _adding(send: Send, extra: List[Tuple[bytes, bytes]]) -> Send:
    """``send``, adding ``extra`` to the response's headers."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return send_with_headers


async def _answer(send: Send, status: int, body: bytes, extra: List[Tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["FloodgateMiddleware"]
_ = Dict  # typing re-export guard
