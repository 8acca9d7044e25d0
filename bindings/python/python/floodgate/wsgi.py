"""WSGI middleware (Flask, any WSGI app).

    from floodgate import Engine
    from floodgate.wsgi import FloodgateMiddleware
    app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"))
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from ._floodgate import Engine
from ._web import client_ip, denial_body, networks

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]

_STATUS = {200: "200 OK", 401: "401 Unauthorized", 403: "403 Forbidden", 429: "429 Too Many Requests"}


def _headers(environ: dict) -> List[Tuple[str, str]]:
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out.append((key[5:].replace("_", "-").lower(), value))
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            out.append((key.replace("_", "-").lower(), environ[key]))
    return out


class FloodgateMiddleware:
    """Decides every request with ``engine`` before the app sees it."""

    def __init__(self, app: WSGIApp, engine: Engine, trusted_proxies: Sequence[str] = ()) -> None:
        self.app = app
        self.engine = engine
        self.trusted = networks(trusted_proxies)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        headers = _headers(environ)
        ip = client_ip(environ.get("REMOTE_ADDR"), headers, self.trusted)
        path = environ.get("PATH_INFO", "/") or "/"
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        verdict = self.engine.check_request(
            method=environ.get("REQUEST_METHOD", "GET"), path=path, client_ip=ip, headers=headers
        )
        extra = list(verdict.headers)
        if not verdict.allowed:
            body = denial_body(verdict)
            start_response(
                _STATUS.get(verdict.status, str(verdict.status)),
                [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra],
            )
            return [body]

        def start_with_headers(status: str, response_headers: list, exc_info: Optional[Any] = None) -> Any:
            return start_response(status, [*response_headers, *extra], exc_info)

        return self.app(environ, start_with_headers)


__all__ = ["FloodgateMiddleware"]
