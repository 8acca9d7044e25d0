"""FastAPI and Flask apps for benches/http/run.py, chosen by FG_BENCH_MODE:
none, floodgate (Floodgate's middleware), extension (Flask only: the Flask
extension) or peer (slowapi / flask-limiter), each
at 1,000,000 requests per minute per IP, or floor (a middleware that only adds
two constant rate-limit headers: what any limiter setting them pays). Served
by uvicorn (`py_apps:fastapi_app`) and gunicorn (`py_apps:flask_app`)."""
import os
import pathlib

MODE = os.environ.get("FG_BENCH_MODE", "none")
POLICY = pathlib.Path(os.environ.get("FG_BENCH_POLICY") or pathlib.Path(__file__).with_name("policy.toml"))
# The peers' limit: generous, or 1 per minute when the bench floods (--tight).
PEER_LIMIT = os.environ.get("FG_BENCH_PEER_LIMIT", "1000000/minute")
if os.environ.get("FG_BENCH_LOG") in ("each", "info"):
    # "each": every event logged as a line (what the package did before it
    # summarised); "info": a production setup, where the summaries show. For the
    # logging measurement in benches/README.md.
    import logging
    import sys

    level = logging.DEBUG if os.environ["FG_BENCH_LOG"] == "each" else logging.INFO
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s %(message)s")

# The floor's headers: what Floodgate sends for policy.toml (draft-10).
FLOOR = (("RateLimit-Policy", '"everything";q=1000000;w=60'), ("RateLimit", '"everything";r=999999;t=60;pk=:AAAAAAAAAAA=:'))
FLOOR_ASGI = [(n.lower().encode(), v.encode()) for n, v in FLOOR]


class _FloorAsgi:
    """A pure ASGI middleware adding the floor's headers (the shape of Floodgate's)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *FLOOR_ASGI]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _FloorWsgi:
    """A WSGI middleware adding the floor's headers."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            return start_response(status, [*headers, *FLOOR], exc_info)

        return self.app(environ, start_with_headers)


def _fastapi():
    from fastapi import FastAPI, Request

    app = FastAPI()
    if MODE == "floodgate":
        from floodgate import Engine
        from floodgate.asgi import FloodgateMiddleware

        app.add_middleware(FloodgateMiddleware, engine=Engine.from_file(str(POLICY)))
    elif MODE == "floor":
        app.add_middleware(_FloorAsgi)
    elif MODE == "peer":
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIMiddleware
        from slowapi.util import get_remote_address

        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[PEER_LIMIT], headers_enabled=True)
        app.add_middleware(SlowAPIMiddleware)

    @app.get("/items")
    def items(request: Request):
        return {"ok": True}

    return app


def _flask():
    from flask import Flask, jsonify

    app = Flask(__name__)
    if MODE == "floodgate":
        from floodgate import Engine
        from floodgate.wsgi import FloodgateMiddleware

        app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file(str(POLICY)))
    elif MODE == "extension":
        from floodgate import Engine
        from floodgate.flask import Floodgate

        Floodgate(app, Engine.from_file(str(POLICY)))
    elif MODE == "floor":
        app.wsgi_app = _FloorWsgi(app.wsgi_app)
    elif MODE == "peer":
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(get_remote_address, app=app, default_limits=[PEER_LIMIT], storage_uri="memory://", headers_enabled=True)

    @app.get("/items")
    def items():
        return jsonify(ok=True)

    return app


fastapi_app = _fastapi() if os.environ.get("FG_BENCH_APP") == "fastapi" else None
flask_app = _flask() if os.environ.get("FG_BENCH_APP") == "flask" else None
