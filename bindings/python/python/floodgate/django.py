"""Django middleware. In settings.py:

    MIDDLEWARE = ["floodgate.django.FloodgateMiddleware", ...]
    FLOODGATE = {"policy": BASE_DIR / "policy.toml", "trusted_proxies": ["10.0.0.0/8"]}

``policy`` may be a path or a dict shaped like the TOML file. ``trusted_proxies``
(addresses, networks, and ``"unix:"`` when the proxy reaches gunicorn over a
Unix socket) and ``forwarded_header`` (default ``X-Forwarded-For``) say where
the client address comes from; ``"validate": False`` silences the warning of an
untrusted proxy. The engine sees ``request.path_info``, the path Django's URL
resolver matches. For a request a rule keyed by a body field meets (``key =
"body:username"``), the engine gets ``request.body`` (Django keeps it for the
view); a body past ``MAX_BODY_BYTES`` is answered 413.

The middleware is sync and async capable: under ASGI (uvicorn, daphne,
``get_asgi_application``) Django calls it as a coroutine, with no thread hop
(a sync-only middleware in an async stack costs each request a trip through
``sync_to_async``'s single thread). There an engine on Redis decides with
``check_request_async`` and settles with ``settle_async``: no thread waits for
the round trips.
"""

from __future__ import annotations

from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from ._floodgate import Engine
from ._floodgate import BAD_REQUEST_BODY, MAX_BODY_BYTES, TOO_LARGE_BODY
from ._web import (
    COST_HEADER,
    reads_bodies,
    ProxyCheck,
    client_ip,
    environ_keys,
    networks,
    parse_cost,
    router_path,
    settle_quietly,
    settle_quietly_async,
    wanted_headers,
)
from .errors import InvalidRequestError
from .wsgi import BodyTooLarge


def _json(body: Any, status: int) -> Any:
    """A denial's answer, with its length: it returns from above the
    middleware that would set one (CommonMiddleware), and the servers sent it
    chunked without."""
    from django.http import HttpResponse

    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(response.content))
    return response


def _adding(response: Any, extra: Any) -> Any:
    for name, value in extra:
        response[name] = value
    return response


def _cost(response: Any) -> Any:
    """The real cost a ``Floodgate-Cost`` response header gives (removed)."""
    cost = parse_cost(response.headers.get(COST_HEADER))
    if COST_HEADER in response.headers:
        del response.headers[COST_HEADER]
    return cost


class FloodgateMiddleware:
    """Decides every request before the view; adds the rate-limit headers."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings

        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        conf = getattr(settings, "FLOODGATE", {})
        policy = conf.get("policy")
        if isinstance(policy, dict):
            self.engine = Engine.from_dict(policy)
        elif policy is not None:
            self.engine = Engine.from_file(str(policy))
        else:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured("settings.FLOODGATE['policy'] is required (a path or a dict)")
        self.trusted = networks(conf.get("trusted_proxies", ()))
        self.forwarded_header = conf.get("forwarded_header", "x-forwarded-for")
        self._check = ProxyCheck(self.trusted, self.forwarded_header, conf.get("validate", True))
        self._forwarded_key = "HTTP_" + self.forwarded_header.upper().replace("-", "_")
        self._keys = environ_keys(wanted_headers(self.engine, self.forwarded_header))
        self._bodies = reads_bodies(self.engine)

    def _read(self, request: Any) -> Any:
        """The request as the engine sees it: (method, path, client IP,
        headers, body). The body only for a rule keyed by a body field
        (``request.body``: Django keeps it for the view); ``BodyTooLarge``
        past ``MAX_BODY_BYTES``."""
        meta = request.META
        if self._check.left > 0:
            self._check(meta.get("REMOTE_ADDR"), self._forwarded_key in meta)
        headers = [(name, meta[key]) for key, name in self._keys if meta.get(key)]
        ip = client_ip(meta.get("REMOTE_ADDR"), headers, self.trusted, self.forwarded_header)
        path = router_path(request.path_info or "/", meta.get("QUERY_STRING", ""))
        body = None
        if self._bodies and self.engine.reads_body(request.method, path):
            try:
                length = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > MAX_BODY_BYTES:
                raise BodyTooLarge()
            body = request.body
            if len(body) > MAX_BODY_BYTES:
                raise BodyTooLarge()
        return request.method, path, ip, headers, body

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        try:
            method, path, ip, headers, body = self._read(request)
            # The headers to add (a request allowed with nothing to settle), or the Verdict.
            verdict = self.engine._check_middleware(method, path, ip, headers, False, body)
        except InvalidRequestError:
            return _json(BAD_REQUEST_BODY, 400)
        except BodyTooLarge:
            return _json(TOO_LARGE_BODY, 413)
        if type(verdict) is list:
            return _adding(self.get_response(request), verdict)
        if not verdict.allowed:
            response = _json(verdict.body, verdict.status)
        elif verdict.needs_settle:
            response = self._run_and_settle(request, verdict)
        else:
            response = self.get_response(request)
        return _adding(response, verdict.headers)

    async def _acall(self, request: Any) -> Any:
        """``__call__`` under ASGI: the same decision, the view awaited."""
        engine = self.engine
        try:
            method, path, ip, headers, body = self._read(request)
            if engine.blocking:  # Redis: the round trip on a tokio worker, no thread waiting
                verdict = await engine.check_request_async(
                    method=method, path=path, client_ip=ip, headers=headers, body=body
                )
            else:
                verdict = engine._check_middleware(method, path, ip, headers, False, body)
        except InvalidRequestError:
            return _json(BAD_REQUEST_BODY, 400)
        except BodyTooLarge:
            return _json(TOO_LARGE_BODY, 413)
        if type(verdict) is list:
            return _adding(await self.get_response(request), verdict)
        if not verdict.allowed:
            response = _json(verdict.body, verdict.status)
        elif verdict.needs_settle:
            response = await self._arun_and_settle(request, verdict)
        else:
            response = await self.get_response(request)
        return _adding(response, verdict.headers)

    def _settle_later(self, response: Any, verdict: Any) -> bool:
        """A streamed response: settled when Django closes it, after its last
        chunk (Django calls ``close`` in a worker thread under ASGI too). The
        real cost from its ``Floodgate-Cost`` header (removed) is taken now."""
        closers = getattr(response, "_resource_closers", None)
        if not (getattr(response, "streaming", False) and isinstance(closers, list)):
            return False
        cost = _cost(response)
        closers.append(lambda: settle_quietly(self.engine, verdict, response.status_code, cost))
        return True

    def _run_and_settle(self, request: Any, verdict: Any) -> Any:
        """Runs the view and settles ``verdict``: with the response's status (500
        if the view raised), once a streaming response has been sent in full.
        A ``Floodgate-Cost`` response header gives the real cost and is removed."""
        try:
            response = self.get_response(request)
        except BaseException:
            settle_quietly(self.engine, verdict, 500)
            raise
        if not self._settle_later(response, verdict):
            settle_quietly(self.engine, verdict, response.status_code, _cost(response))
        return response

    async def _arun_and_settle(self, request: Any, verdict: Any) -> Any:
        """``_run_and_settle`` under ASGI."""
        try:
            response = await self.get_response(request)
        except BaseException:
            await settle_quietly_async(self.engine, verdict, 500)
            raise
        if not self._settle_later(response, verdict):
            await settle_quietly_async(self.engine, verdict, response.status_code, _cost(response))
        return response


__all__ = ["FloodgateMiddleware"]
