"""Django middleware. In settings.py:

    MIDDLEWARE = ["floodgate.django.FloodgateMiddleware", ...]
    FLOODGATE = {"policy": BASE_DIR / "policy.toml", "trusted_proxies": ["10.0.0.0/8"]}

``policy`` may be a path or a dict shaped like the TOML file. ``trusted_proxies``
(addresses, networks, and ``"unix:"`` when the proxy reaches gunicorn over a
Unix socket) and ``forwarded_header`` (default ``X-Forwarded-For``) say where
the client address comes from; ``"validate": False`` silences the warning of an
untrusted proxy. The engine sees ``request.path_info``, the path Django's URL
resolver matches.
"""

from __future__ import annotations

from typing import Any, Callable

from ._floodgate import Engine
from ._floodgate import BAD_REQUEST_BODY
from ._web import COST_HEADER, ProxyCheck, client_ip, environ_keys, networks, parse_cost, router_path, wanted_headers
from .errors import FloodgateError, InvalidRequestError


class FloodgateMiddleware:
    """Decides every request before the view; adds the rate-limit headers."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings

        self.get_response = get_response
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

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponse

        meta = request.META
        if self._check.left > 0:
            self._check(meta.get("REMOTE_ADDR"), self._forwarded_key in meta)
        headers = [(name, meta[key]) for key, name in self._keys if meta.get(key)]
        ip = client_ip(request.META.get("REMOTE_ADDR"), headers, self.trusted, self.forwarded_header)
        path = router_path(request.path_info or "/", request.META.get("QUERY_STRING", ""))
        try:
            # The headers to add (a request allowed with nothing to settle), or the Verdict.
            verdict = self.engine._check_middleware(request.method, path, ip, headers, False)
        except InvalidRequestError:
            return HttpResponse(BAD_REQUEST_BODY, status=400, content_type="application/json")
        if type(verdict) is list:
            response = self.get_response(request)
            extra = verdict
        else:
            if not verdict.allowed:
                response = HttpResponse(verdict.body, status=verdict.status, content_type="application/json")
            elif verdict.needs_settle:
                response = self._run_and_settle(request, verdict)
            else:
                response = self.get_response(request)
            extra = verdict.headers
        for name, value in extra:
            response[name] = value
        return response

    def _run_and_settle(self, request: Any, verdict: Any) -> Any:
        """Runs the view and settles ``verdict``: with the response's status (500
        if the view raised), once a streaming response has been sent in full.
        A ``Floodgate-Cost`` response header gives the real cost and is removed."""

        def settle(status: int, cost: Any = None) -> None:
            try:
                self.engine.settle(verdict, status=status, cost=cost)
            except FloodgateError:
                pass  # already settled by the view, or the store is down: the charge stands

        try:
            response = self.get_response(request)
        except BaseException:
            settle(500)
            raise
        cost = parse_cost(response.headers.get(COST_HEADER))
        if COST_HEADER in response.headers:
            del response.headers[COST_HEADER]
        closers = getattr(response, "_resource_closers", None)
        if getattr(response, "streaming", False) and isinstance(closers, list):
            closers.append(lambda: settle(response.status_code, cost))
        else:
            settle(response.status_code, cost)
        return response


__all__ = ["FloodgateMiddleware"]
