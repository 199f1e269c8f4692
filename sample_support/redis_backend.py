"""Which Redis the samples use: a real server from `REDIS_URL`, or an in-process fakeredis.

Both hand out `redis.asyncio.Redis` clients with `decode_responses=True`, which is what
`RedisHistoryProvider(redis_client=...)` requires. Every client from one `RedisBackend` talks to
the same data, so a "restart" (new client, new provider, new agent) really finds the history.

`local_redis_server()` starts a throwaway `redis-server` on a free loopback port, for the tests and the
benchmark.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import redis.asyncio as redis
from redis.exceptions import RedisError

from .config import SampleError, load_settings, setting

START_REDIS_HINT = "start one with `redis-server --port 6379` or unset REDIS_URL to use the in-process fakeredis"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class RedisBackend:
    """A Redis to keep chat history in; `new_client()` opens another connection to the same data."""

    url: str | None
    fake_server: fakeredis.FakeServer | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return f"Redis at {_without_password(self.url)}" if self.url else "fakeredis (in-process)"

    def new_client(self) -> redis.Redis:
        if self.url:
            return redis.from_url(self.url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
        return fakeredis.FakeAsyncRedis(server=self.fake_server, decode_responses=True)

    async def check(self) -> None:
        """Fail with one line naming REDIS_URL when the configured server cannot be reached."""
        client = self.new_client()
        try:
            await client.ping()
        except (RedisError, OSError) as error:
            raise SampleError(
                f"cannot reach Redis at REDIS_URL={_without_password(self.url or '')} ({error}): {START_REDIS_HINT}"
            ) from None
        finally:
            await client.aclose()


def select_redis() -> RedisBackend:
    """`REDIS_URL` from the environment / `.env`, or one fakeredis server shared by all clients of this process."""
    load_settings()
    if url := setting("REDIS_URL"):
        return RedisBackend(url)
    return RedisBackend(None, fakeredis.FakeServer())


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_redis_server() -> Iterator[str | None]:
    """A throwaway `redis-server` (no persistence) on a free loopback port: yields its URL, or None if the
    binary is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_loopback_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SampleError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
