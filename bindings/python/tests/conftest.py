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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(args: list, port: int) -> subprocess.Popen:
    """A redis-server (or sentinel) started with `args`, once it answers PING on `port`."""
    proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"redis-server {args} did not start")


@pytest.fixture
def own_redis():
    """Starts a redis-server on a free port for one test; killed after it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    proc = _start_redis(["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port)
    try:
        yield OwnRedis(proc, port)
    finally:
        proc.kill()
        proc.wait()


def _sentinel(master_port: int, tmp_path, extra: str = ""):
    """A Redis Sentinel monitoring the server on `master_port` as `fgmaster`
    (quorum 1), `extra` added to its configuration: (process, port)."""
    port = _free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor fgmaster 127.0.0.1 {master_port} 1\n{extra}")
    return _start_redis([str(conf), "--sentinel"], port), port


@pytest.fixture
def own_sentinel(own_redis, tmp_path):
    """A Redis Sentinel monitoring `own_redis` as master `fgmaster` (quorum 1):
    `(sentinel port, own_redis)`; killed after the test."""
    proc, port = _sentinel(own_redis.port, tmp_path)
    try:
        yield port, own_redis
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def own_sentinel_with_passwords(own_redis, tmp_path):
    """As production runs Sentinel: the master `own_redis` takes only the ACL
    user `app` (password `apppw`; the default user off), and the sentinel, which
    logs in to the master as `app`, requires the password `sentpw` of its own
    clients. `(sentinel port, own_redis)`."""
    cli = ["redis-cli", "-p", str(own_redis.port)]
    subprocess.run([*cli, "ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all"], check=True, capture_output=True)
    subprocess.run([*cli, "ACL", "SETUSER", "default", "off"], check=True, capture_output=True)
    proc, port = _sentinel(own_redis.port, tmp_path, "sentinel auth-user fgmaster app\nsentinel auth-pass fgmaster apppw\n")
    try:
        subprocess.run(["redis-cli", "-p", str(port), "ACL", "SETUSER", "default", "resetpass", ">sentpw"],
                       check=True, capture_output=True)
        yield port, own_redis
    finally:
        proc.kill()
        proc.wait()
