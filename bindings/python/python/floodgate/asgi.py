"""ASGI middleware (Starlette, FastAPI, any ASGI app).

    from floodgate import Engine
    from floodgate.asgi import FloodgateMiddleware
    app.add_middleware(FloodgateMiddleware, engine=Engine.from_file("policy.toml"),
                       trusted_proxies=["10.0.0.0/8"])
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Sequence, Tuple

from . import check_request_async
from ._floodgate import Engine
from ._web import client_ip, denial_body, networks

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FloodgateMiddleware:
    """Decides every HTTP request with ``engine``; answers 429/403/401 with a JSON
    body and the verdict's headers, and adds the rate-limit headers to allowed
    responses. The check never blocks the event loop."""

    def __init__(self, app: ASGIApp, engine: Engine, trusted_proxies: Sequence[str] = ()) -> None:
        self.app = app
        self.engine = engine
        self.trusted = networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: List[Tuple[str, str]] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        client = scope.get("client")
        ip = client_ip(client[0] if client else None, headers, self.trusted)
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        # A dict crosses into Rust fastest; a repeated header keeps its last value
        # (the forwarded chain above was read from the full list).
        by_name = dict(headers)
        if self.engine.blocking:  # a Redis store: off the event loop
            verdict = await check_request_async(
                self.engine, method=scope["method"], path=path, client_ip=ip, headers=by_name
            )
        else:  # in memory: well under a microsecond of work, inline
            verdict = self.engine.check_request(method=scope["method"], path=path, client_ip=ip, headers=by_name)
        extra = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in verdict.headers]
        if not verdict.allowed:
            body = denial_body(verdict)
            await send(
                {
                    "type": "http.response.start",
                    "status": verdict.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["FloodgateMiddleware"]
_ = Dict  # typing re-export guard
