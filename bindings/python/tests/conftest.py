import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("FG_TEST_REDIS_URL")
    if not url:
        pytest.skip("FG_TEST_REDIS_URL not set (scripts/test starts a redis-server and sets it)")
    return url


class OwnRedis:
    """A redis-server of one test's own (to freeze, fill or stop): `proc`, `port`, `url`."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port, self.url = proc, port, f"redis://127.0.0.1:{port}/"


@pytest.fixture
def own_redis():
    """Starts a redis-server on a free port for one test; killed after it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield OwnRedis(proc, port)
    finally:
        proc.kill()
        proc.wait()
