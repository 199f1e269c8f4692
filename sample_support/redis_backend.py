"""Which Redis the samples use: a real server from `REDIS_URL`, or an in-process fakeredis.

Both hand out `redis.asyncio.Redis` clients with `decode_responses=True`, which is what
`RedisHistoryProvider(redis_client=...)` requires. Every client from one `RedisBackend` talks to
the same data, so a "restart" (new client, new provider, new agent) really finds the history.
"""

from __future__ import annotations

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


def __getattr__(name: str) -> object:
    # Temporary: the test-only helpers moved to tests/local_servers.py; bench/thread_store_bench.py and
    # tests/test_redis_chat_message_store_thread.py still import them from here until their owners switch.
    if name in ("free_loopback_port", "local_redis_server"):
        from tests import local_servers

        return getattr(local_servers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
