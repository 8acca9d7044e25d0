"""FastAPI and Flask apps for benches/http/run.py, chosen by FG_BENCH_MODE:
none, floodgate (Floodgate's middleware) or peer (slowapi / flask-limiter), each
at 1,000,000 requests per minute per IP. Served by uvicorn (`py_apps:fastapi_app`)
and gunicorn (`py_apps:flask_app`)."""
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


def _fastapi():
    from fastapi import FastAPI, Request

    app = FastAPI()
    if MODE == "floodgate":
        from floodgate import Engine
        from floodgate.asgi import FloodgateMiddleware

        app.add_middleware(FloodgateMiddleware, engine=Engine.from_file(str(POLICY)))
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
