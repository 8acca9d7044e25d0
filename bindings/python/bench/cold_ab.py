"""What one request's check costs with its code cold, as between real
requests, for two builds of the extension loaded into one interpreter
(benches/http/cold_ab.mjs is the Node one; benches/README.md says why).

    python bench/cold_ab.py A.so [B.so] [--n N] [--policy FILE]

Each check runs right after a request handled by a Flask app (its WSGI
callable, called directly: Werkzeug's request, Flask's dispatch and
response, as a server runs between two checks), timed alone
(`time.perf_counter_ns`), and again at once (warm). The builds take turns,
so what slows the host slows both; with one build it is compared with itself
(an A/A run: the spread that is noise). Builds: `maturin build --release`
(or `maturin develop --release`), the `_floodgate*.so` copied aside, before
and after a change.
"""

import argparse
import importlib.machinery
import importlib.util
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path: str, tag: str):
    """The extension at `path` as module `<tag>._floodgate` (its init
    function is named after the last part, so any package name works)."""
    name = f"{tag}._floodgate"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b", nargs="?")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--policy", default=os.path.join(HERE, "../../../benches/http/policy.toml"))
    args = ap.parse_args()

    # Two copies of one file would be one library to the loader: each is copied.
    tmp = tempfile.mkdtemp(prefix="fg-cold-")
    paths = []
    for i, p in enumerate([args.a, args.b or args.a]):
        to = os.path.join(tmp, f"{'ab'[i]}.so")
        shutil.copyfile(p, to)
        paths.append(to)
    engines = [load(p, f"fgcold{'ab'[i]}").Engine.from_file(args.policy) for i, p in enumerate(paths)]

    import flask

    app = flask.Flask("cold")

    @app.get("/api/items")
    def items():
        return {"ok": True}

    def environ():
        return {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/api/items", "QUERY_STRING": "", "SERVER_NAME": "x",
            "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "HTTP_HOST": "x",
        }

    def request():
        for _ in app(environ(), lambda status, headers, exc=None: None):
            pass

    # As the ASGI middleware calls it: the request's raw headers, bytes pairs.
    headers = [(b"host", b"x"), (b"user-agent", b"wrk")]
    checks = [
        (lambda e=e: e._check_middleware("GET", "/api/items", "127.0.0.1", headers, True)) for e in engines
    ]
    cold = [[], []]
    warm = [[], []]
    clock = time.perf_counter_ns
    for i in range(args.n):
        for k in range(2):
            j = (k + i) % 2  # A first, then B first
            request()
            f = checks[j]
            t0 = clock()
            f()
            cold[j].append(clock() - t0)
            t0 = clock()
            f()
            warm[j].append(clock() - t0)
    shutil.rmtree(tmp, ignore_errors=True)

    def median(xs):  # the first quarter is the warm-up: left out
        return statistics.median(xs[len(xs) // 4 :])

    skip = args.n // 4
    step = (args.n - skip) // 5
    fifths = [
        statistics.median(cold[1][skip + f * step : skip + (f + 1) * step])
        / statistics.median(cold[0][skip + f * step : skip + (f + 1) * step])
        for f in range(5)
    ]
    print(f"{args.n} rounds; A {args.a}, B {args.b or '(A again)'}; medians in ns")
    print(
        f"request check: A cold {median(cold[0]):.0f}, warm {median(warm[0]):.0f} | "
        f"B cold {median(cold[1]):.0f}, warm {median(warm[1]):.0f} | "
        f"cold B/A {median(cold[1]) / median(cold[0]):.3f} (by fifths: {' '.join(f'{x:.2f}' for x in fifths)})"
    )


if __name__ == "__main__":
    main()
