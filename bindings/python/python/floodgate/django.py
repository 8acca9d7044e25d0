"""Django middleware. In settings.py:

    MIDDLEWARE = ["floodgate.django.FloodgateMiddleware", ...]
    FLOODGATE = {"policy": BASE_DIR / "policy.toml", "trusted_proxies": ["10.0.0.0/8"]}

``policy`` may be a path or a dict shaped like the TOML file.
"""

from __future__ import annotations

from typing import Any, Callable

from ._floodgate import Engine
from ._web import client_ip, denial_body, networks


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

    def __call__(self, request: Any) -> Any:
        from django.http import HttpResponse

        headers = list(request.headers.items())
        ip = client_ip(request.META.get("REMOTE_ADDR"), headers, self.trusted)
        verdict = self.engine.check_request(
            method=request.method, path=request.get_full_path(), client_ip=ip, headers=headers
        )
        if not verdict.allowed:
            response = HttpResponse(denial_body(verdict), status=verdict.status, content_type="application/json")
        else:
            response = self.get_response(request)
        for name, value in verdict.headers:
            response[name] = value
        return response


__all__ = ["FloodgateMiddleware"]
