"""Flask extension: the request decided inside Flask, so that its answers go
through the app's ``after_request`` functions (Flask-CORS, security headers,
request ids) like any other response.

    from floodgate import Engine
    from floodgate.flask import Floodgate
    Floodgate(app, Engine.from_file("policy.toml"))
    # or, with an app factory: floodgate = Floodgate(engine=...); floodgate.init_app(app)

It sees what the WSGI middleware (``floodgate.wsgi``) sees, read from the
same environ: ``PATH_INFO``, the headers the policy reads and the client
address from the one forwarding header the trusted proxy sets
(``forwarded_header``; list ``"unix:"`` in ``trusted_proxies`` behind a proxy
on a Unix socket). The difference is where the answer is made: the WSGI
middleware answers 429 (and 400 for a request the engine cannot use) before
Flask runs, so no ``after_request`` function sees it (a browser then cannot
read a 429 without Flask-CORS's headers); here the check is the app's first
``before_request`` function, and a denial is a Flask response the rest of the
app decorates. Flask also runs its other ``before_request`` functions (a
session or user loaded from a database) only for allowed requests.

CORS preflights (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) are checked and charged like any request
by default, as Flask-Limiter and the WSGI middleware do: in Flask they reach
the app (its ``before_request`` functions run for them, Flask-CORS answers
in ``after_request``), so leaving them uncharged lets anyone send requests
past every limit by adding two headers. A browser's request that needs a
preflight then costs two (``Access-Control-Max-Age`` lets it reuse one).
``charge_preflights=False`` leaves preflights to routes whose ``OPTIONS``
Flask answers itself uncharged; a route with its own ``OPTIONS`` view is
still checked.

Settlement. When a rule with ``count``, ``cost_from = "response"`` or
``max_in_flight`` admitted the request (``verdict.needs_settle``), the
extension settles it when the server closes the response it sends (after
the last chunk, or when the client went away: ``init_app`` wraps
``app.wsgi_app`` for that), with the status the extension's
``after_request`` function saw, or 500 if the app raised without a
response. A ``Floodgate-Cost`` response header gives the real cost and is
removed. An ``after_request`` function that returns a new response object
is fine: the response the server sends is the one closed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

from flask import Flask, Response, request

from ._floodgate import BAD_REQUEST_BODY, TOO_LARGE_BODY, Engine
from ._web import COST_HEADER, parse_cost, settle_quietly
from .errors import InvalidRequestError
from .wsgi import BodyTooLarge, _EnvironCheck, _Settling

# Per request, in the WSGI environ (a dict lookup; `flask.g` costs more).
_HEADERS = "floodgate.headers"  # the rate-limit headers to add to the response
_PENDING = "floodgate.pending"  # a _Pending: a verdict to settle


class _Pending:
    """A verdict to settle once, with the real cost once a response gave it."""

    __slots__ = ("verdict", "cost", "status")

    def __init__(self, verdict: Any) -> None:
        self.verdict = verdict
        self.cost: Optional[float] = None
        # The response's status, once an after_request function saw one.
        self.status = 0


class Floodgate:
    """Decides every request of a Flask app with ``engine``."""

    def __init__(
        self,
        app: Optional[Flask] = None,
        engine: Optional[Engine] = None,
        *,
        trusted_proxies: Sequence[str] = (),
        forwarded_header: str = "x-forwarded-for",
        validate: bool = True,
        charge_preflights: bool = True,
    ) -> None:
        if engine is None:
            raise TypeError("Floodgate(app, engine): an engine is required")
        self.engine = engine
        self.charge_preflights = charge_preflights
        # The WSGI middleware's reading of the environ.
        self._decide = _EnvironCheck(engine, trusted_proxies, forwarded_header, validate)
        self.trusted = self._decide.trusted
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Registers the check as ``app``'s first ``before_request`` function
        (before those registered earlier) and the headers as an
        ``after_request`` function, and wraps ``app.wsgi_app`` to settle when
        the server closes the response."""
        app.extensions["floodgate"] = self
        app.before_request_funcs.setdefault(None, []).insert(0, self._before)
        app.after_request(self._after)
        app.wsgi_app = self._settling(app.wsgi_app)  # type: ignore[method-assign]

    def _settling(self, wsgi_app: Callable[[dict, Any], Iterable[bytes]]) -> Callable[[dict, Any], Iterable[bytes]]:
        """``wsgi_app``, settling a request's verdict when the server closes
        the response iterable (PEP 3333: however the response ended), or at
        once if the app raised."""

        def settling(environ: dict, start_response: Any) -> Iterable[bytes]:
            try:
                body = wsgi_app(environ, start_response)
            except BaseException:
                pending = environ.get(_PENDING)
                if pending is not None:
                    settle_quietly(self.engine, pending.verdict, 500, pending.cost)
                raise
            pending = environ.get(_PENDING)
            if pending is None:
                return body
            engine = self.engine
            return _Settling(body, lambda: settle_quietly(engine, pending.verdict, pending.status or 500, pending.cost))

        return settling

    def _before(self) -> Optional[Response]:
        environ = request.environ
        if (
            not self.charge_preflights
            and environ.get("REQUEST_METHOD") == "OPTIONS"
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
            and "HTTP_ORIGIN" in environ
            and getattr(request.url_rule, "provide_automatic_options", False)
        ):
            # A CORS preflight, which the browser sends on its own before the
            # request it asks about (that one is charged), to a route whose
            # OPTIONS Flask answers itself (Flask-CORS decorating it), no view
            # run: not charged or refused when the app says so. A route with a
            # view of its own for OPTIONS is checked like any other request.
            return None
        try:
            # The headers to add (a request allowed with nothing to settle), or the Verdict.
            verdict = self._decide(environ)
        except InvalidRequestError:
            return Response(BAD_REQUEST_BODY, status=400, content_type="application/json")
        except BodyTooLarge:
            return Response(TOO_LARGE_BODY, status=413, content_type="application/json")
        if type(verdict) is list:
            if verdict:
                environ[_HEADERS] = verdict
            return None
        headers = list(verdict.headers)
        if not verdict.allowed:
            # Flask skips the view; the after_request functions still run.
            return Response(verdict.body, status=verdict.status, headers=headers, content_type="application/json")
        environ[_HEADERS] = headers
        if verdict.needs_settle:
            environ[_PENDING] = _Pending(verdict)
        return None

    def _after(self, response: Response) -> Response:
        environ = request.environ
        headers = environ.pop(_HEADERS, None)
        if headers:
            response.headers.extend(headers)
        pending = environ.get(_PENDING)
        if pending is not None:
            # Settled when the server closes the response (`_settling`); the
            # last response seen here (an error in a later after_request
            # function makes a 500, which comes here too) gives the status.
            cost = response.headers.get(COST_HEADER)
            if cost is not None:
                pending.cost = parse_cost(cost)
                del response.headers[COST_HEADER]
            pending.status = response.status_code
        return response


__all__ = ["Floodgate"]
