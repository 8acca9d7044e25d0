"""WSGI middleware (Flask, any WSGI app).

    from floodgate import Engine
    from floodgate.wsgi import FloodgateMiddleware
    app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"))

The engine sees what the app routes on: ``PATH_INFO`` (decoded, below
``SCRIPT_NAME``), the header as the server passes it (WSGI servers join repeated
headers with commas; a deny-listed API key anywhere in the joined value is
refused), and the client address from the one forwarding header the trusted proxy
sets (``forwarded_header``, default ``X-Forwarded-For``). Behind a proxy on a
Unix socket (gunicorn's ``-b unix:``), list ``"unix:"`` in ``trusted_proxies``.
A request the engine cannot use is answered 400. A proxy that is not trusted is
warned of once (``validate=False`` turns that off; see ``_web.ProxyCheck``).
For a request a rule keyed by a body field meets (``key = "body:username"``),
the body is read first (``_web.read_wsgi_body``) and put back for the app;
past ``MAX_BODY_BYTES`` it is answered 413.

Settlement. When a rule with ``count``, ``cost_from = "response"`` or
``max_in_flight`` admitted the request (``verdict.needs_settle``), the
middleware settles it when the server closes the response iterable (after the
last chunk, or when the client went away), with the status passed to
``start_response``, or 500 if the app raised. A ``Floodgate-Cost`` response
header gives the real cost and is removed from the response.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from ._floodgate import Engine
from ._floodgate import BAD_REQUEST_BODY, TOO_LARGE_BODY
from ._web import (
    COST_HEADER,
    ProxyCheck,
    environ_keys,
    networks,
    parse_cost,
    read_wsgi_body,
    reads_bodies,
    settle_quietly,
    wanted_headers,
)
from .errors import InvalidRequestError

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]

_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    413: "413 Content Too Large",
    429: "429 Too Many Requests",
}


class BodyTooLarge(Exception):
    """A body over ``MAX_BODY_BYTES`` on a request a rule keyed by a body field meets (answered 413)."""


def _adding(start_response: StartResponse, extra: List[Tuple[str, str]]) -> StartResponse:
    """``start_response``, adding ``extra`` to the response's headers."""

    def start_with_headers(status: str, response_headers: list, exc_info: Optional[Any] = None) -> Any:
        return start_response(status, [*response_headers, *extra], exc_info)

    return start_with_headers


class _EnvironCheck:
    """A request decided from its WSGI environ, as the WSGI middleware and the
    Flask extension (``floodgate.flask``) both do: the untrusted-proxy warning
    for the first requests, then the method, PATH_INFO (its Latin-1 bytes as
    UTF-8, as Werkzeug routes it), REMOTE_ADDR and the headers the policy
    reads, read from the environ in one call into the extension, which
    decides."""

    def __init__(self, engine: Engine, trusted_proxies: Sequence[str], forwarded_header: str, validate: bool) -> None:
        self.trusted = networks(trusted_proxies)
        self._check = ProxyCheck(self.trusted, forwarded_header, validate)
        self._forwarded_key = "HTTP_" + forwarded_header.upper().replace("-", "_")
        # The headers the policy reads and, for a trusted proxy's peer, the
        # forwarding header: none to read in the common case.
        read_headers = bool(engine.request_headers) or bool(self.trusted)
        keys = environ_keys(wanted_headers(engine, forwarded_header)) if read_headers else ()
        self._reader = engine._wsgi_reader(list(keys), self.trusted, forwarded_header)
        self._bodies = reads_bodies(engine)

    def __call__(self, environ: dict) -> Any:
        """The headers to add (a request allowed with nothing to settle), or
        the Verdict; ``InvalidRequestError`` for a request the engine cannot
        use, ``BodyTooLarge`` for a body it needs that is too long. A body a
        rule keys on is read and put back for the app (``read_wsgi_body``)."""
        if self._check.left > 0:
            self._check(environ.get("REMOTE_ADDR"), self._forwarded_key in environ)
        if self._bodies and self._reader.reads_body(environ):
            body = read_wsgi_body(environ)
            if body is None:
                raise BodyTooLarge()
            return self._reader.check(environ, body)
        return self._reader.check(environ)


class FloodgateMiddleware:
    """Decides every request with ``engine`` before the app sees it."""

    def __init__(
        self,
        app: WSGIApp,
        engine: Engine,
        trusted_proxies: Sequence[str] = (),
        forwarded_header: str = "x-forwarded-for",
        validate: bool = True,
    ) -> None:
        self.app = app
        self.engine = engine
        self.forwarded_header = forwarded_header
        self._decide = _EnvironCheck(engine, trusted_proxies, forwarded_header, validate)
        self.trusted = self._decide.trusted

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        try:
            verdict = self._decide(environ)
        except (InvalidRequestError, BodyTooLarge) as e:
            status, body = (400, BAD_REQUEST_BODY) if isinstance(e, InvalidRequestError) else (413, TOO_LARGE_BODY)
            start_response(_STATUS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if type(verdict) is list:
            return self.app(environ, _adding(start_response, verdict) if verdict else start_response)
        extra = list(verdict.headers)
        if not verdict.allowed:
            body = verdict.body
            start_response(
                _STATUS.get(verdict.status, str(verdict.status)),
                [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra],
            )
            return [body]
        if not verdict.needs_settle:
            return self.app(environ, _adding(start_response, extra))
        return self._run_and_settle(environ, start_response, verdict, extra)

    def _run_and_settle(
        self, environ: dict, start_response: StartResponse, verdict: Any, extra: list
    ) -> Iterable[bytes]:
        seen = {"status": 0, "cost": None}

        def start_and_watch(status: str, response_headers: list, exc_info: Optional[Any] = None) -> Any:
            seen["status"] = int(status.split(" ", 1)[0])
            kept = []
            for name, value in response_headers:
                if name.lower() == COST_HEADER:
                    seen["cost"] = parse_cost(value)
                else:
                    kept.append((name, value))
            return start_response(status, [*kept, *extra], exc_info)

        def settle(status: int) -> None:
            settle_quietly(self.engine, verdict, status, seen["cost"])

        try:
            body = self.app(environ, start_and_watch)
        except BaseException:
            settle(seen["status"] or 500)
            raise
        return _Settling(body, lambda: settle(seen["status"] or 499))


class _Settling:
    """The app's response iterable, settling the verdict when the server closes
    it (PEP 3333: ``close()`` is called however the response ended)."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close
        self._closed = False

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


__all__ = ["FloodgateMiddleware"]
