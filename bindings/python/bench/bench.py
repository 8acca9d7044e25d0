"""Floodgate beside `limits` (the library behind flask-limiter and slowapi), in one
process, on the same keys. Build the extension in release mode first:

    cd bindings/python && maturin develop --release
    python bench/bench.py [--redis redis://127.0.0.1:6379/]

Prints a table; the figures in benches/README.md come from it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Callable, List, Tuple

import floodgate


def per_call(fn: Callable[[int], object], n: int, repeat: int = 5) -> float:
    """Best of `repeat` runs, in seconds per call."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def in_memory(n: int) -> List[tuple]:
    from limits import RateLimitItemPerSecond, storage, strategies

    rows = []
    for keys in (1, 10_000):
        names = [f"client:{i:012d}" for i in range(keys)]
        fg = floodgate.Limiter("1000000000/second")
        fg_log = floodgate.Limiter("1000/second", algorithm="sliding_log")
        item = RateLimitItemPerSecond(1_000_000_000)
        item_small = RateLimitItemPerSecond(1000)
        mem = storage.MemoryStorage()
        fixed = strategies.FixedWindowRateLimiter(mem)
        moving = strategies.MovingWindowRateLimiter(mem)
        counter = strategies.SlidingWindowCounterRateLimiter(mem)
        m = len(names)
        base = per_call(lambda i: names[i % m], n)  # the loop and key lookup alone
        results = {
            "floodgate gcra": per_call(lambda i: fg.check(names[i % m]), n),
            "floodgate sliding_log": per_call(lambda i: fg_log.check(names[i % m]), n),
            "limits fixed window": per_call(lambda i: fixed.hit(item, names[i % m]), n),
            "limits moving window": per_call(lambda i: moving.hit(item_small, names[i % m]), n // 4),
            "limits sliding window counter": per_call(lambda i: counter.hit(item, names[i % m]), n),
        }
        for name, t in results.items():
            rows.append((f"{keys} keys", name, (t - base) * 1e9, results["limits fixed window"] / t))
    return rows


def asgi_overhead(n: int) -> List[tuple]:
    """Requests/s of a FastAPI app, without and with the middleware, driven in-process
    through ASGI (no sockets: the middleware's share is not diluted by I/O)."""
    from floodgate.asgi import FloodgateMiddleware

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/items")
    async def items():
        return {"items": []}

    engine = floodgate.Engine.from_toml(
        '[[rule]]\nname = "api"\nmatch = "/api/**"\nquotas = ["1000000000/s"]\nkey = "ip"\n'
    )
    wrapped = FloodgateMiddleware(app, engine=engine)  # the same app object, wrapped

    async def drive(target, count):
        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            pass

        t = time.perf_counter()
        for i in range(count):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/api/items",
                "raw_path": b"/api/items",
                "query_string": b"",
                "headers": [(b"host", b"x"), (b"user-agent", b"bench")],
                "client": (f"10.0.{(i >> 8) & 255}.{i & 255}", 1234),
            }
            await target(scope, receive, send)
        return count / (time.perf_counter() - t)

    bare = max(asyncio.run(drive(app, n)) for _ in range(3))
    with_mw = max(asyncio.run(drive(wrapped, n)) for _ in range(3))
    return [("FastAPI, in-process", "without middleware", bare, 1.0), ("FastAPI, in-process", "with FloodgateMiddleware", with_mw, with_mw / bare)]


def redis_rates(url: str, n: int) -> List[tuple]:
    from limits import RateLimitItemPerSecond, storage, strategies
    from limits.aio import storage as aio_storage
    from limits.aio import strategies as aio_strategies

    fg = floodgate.RedisLimiter(url, "1000000000/second", timeout=1.0, prefix="pybench")
    fg_lease = floodgate.RedisLimiter(url, "1000000000/second", timeout=1.0, prefix="pybench-lease", lease=20)
    rs = storage.RedisStorage(url)
    fixed = strategies.FixedWindowRateLimiter(rs)
    moving = strategies.MovingWindowRateLimiter(rs)
    item = RateLimitItemPerSecond(1_000_000_000)
    item_small = RateLimitItemPerSecond(1000)
    names = [f"client:{i:06d}" for i in range(1000)]
    t_fg = per_call(lambda i: fg.check(names[i % 1000]), n, repeat=2)
    t_fixed = per_call(lambda i: fixed.hit(item, names[i % 1000]), n, repeat=2)
    t_moving = per_call(lambda i: moving.hit(item_small, names[i % 1000]), n, repeat=2)
    hot = names[:100]
    t_lease = per_call(lambda i: fg_lease.check(hot[i % 100]), n, repeat=2)

    # 64 checks in flight from asyncio, against limits' asyncio storage (redis-py).
    aio_fixed = aio_strategies.FixedWindowRateLimiter(
        aio_storage.RedisStorage("async+" + url, implementation="redispy")
    )

    async def in_flight(check, total: int) -> float:
        t = time.perf_counter()
        for i in range(0, total, 64):
            await asyncio.gather(*[check(names[(i + j) % 1000]) for j in range(64)])
        return (time.perf_counter() - t) / total

    async def both() -> Tuple[float, float]:
        await in_flight(fg.check_async, 640)  # warm up: connections made
        await in_flight(lambda k: aio_fixed.hit(item, k), 640)
        a = min([await in_flight(fg.check_async, n * 4) for _ in range(2)])
        b = min([await in_flight(lambda k: aio_fixed.hit(item, k), n * 4) for _ in range(2)])
        return a, b

    p_fg, p_fixed = asyncio.run(both())

    # 8 threads, each checking in a loop (floodgate releases the GIL for the round
    # trip; limits' redis-py client shares a thread-safe connection pool).
    from concurrent.futures import ThreadPoolExecutor

    def threaded(check, total: int) -> float:
        def work(w: int) -> None:
            for i in range(total // 8):
                check(names[(w * 131 + i) % 1000])

        with ThreadPoolExecutor(8) as pool:
            t = time.perf_counter()
            list(pool.map(work, range(8)))
            return (time.perf_counter() - t) / total

    th_fg = min(threaded(fg.check, n * 2) for _ in range(2))
    th_fixed = min(threaded(lambda k: fixed.hit(item, k), n * 2) for _ in range(2))
    return [
        ("Redis, sequential", "floodgate RedisLimiter", 1 / t_fg, t_fixed / t_fg),
        ("Redis, sequential", "limits fixed window", 1 / t_fixed, 1.0),
        ("Redis, sequential", "limits moving window", 1 / t_moving, t_fixed / t_moving),
        ("Redis, sequential", "floodgate, lease=20, 100 hot keys", 1 / t_lease, t_fixed / t_lease),
        ("Redis, 64 in flight", "floodgate check_async", 1 / p_fg, p_fixed / p_fg),
        ("Redis, 64 in flight", "limits aio fixed window", 1 / p_fixed, 1.0),
        ("Redis, 8 threads", "floodgate RedisLimiter", 1 / th_fg, th_fixed / th_fg),
        ("Redis, 8 threads", "limits fixed window", 1 / th_fixed, 1.0),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--redis", default=None)
    a = p.parse_args()
    print(f"floodgate {floodgate.__version__}, one process, best of 5")
    print(f"{'workload':<22} {'library':<32} {'ns/check':>10} {'x limits fixed':>15}")
    for w, name, ns, ratio in in_memory(a.n):
        print(f"{w:<22} {name:<32} {ns:>10.0f} {ratio:>14.1f}x")
    print(f"\n{'workload':<22} {'app':<32} {'requests/s':>10} {'ratio':>15}")
    for w, name, rps, ratio in asgi_overhead(a.n // 10):
        print(f"{w:<22} {name:<32} {rps:>10.0f} {ratio:>14.2f}x")
    if a.redis:
        print(f"\n{'workload':<22} {'library':<32} {'checks/s':>10} {'x limits fixed':>15}")
        for w, name, rate, ratio in redis_rates(a.redis, 5000):
            print(f"{w:<22} {name:<32} {rate:>10.0f} {ratio:>14.1f}x")


if __name__ == "__main__":
    main()
