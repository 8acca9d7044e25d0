import os
import pathlib

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
