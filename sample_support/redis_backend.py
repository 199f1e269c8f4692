"""Which Redis the samples use: a real server from `REDIS_URL`, or an in-process fakeredis.

Both hand out `redis.asyncio.Redis` clients with `decode_responses=True`, which is what
`RedisHistoryProvider(redis_client=...)` requires. Every client from one `RedisBackend` talks to
the same data, so a "restart" (new client, new provider, new agent) really finds the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .config import SampleError, load_settings, masked_url, one_line, setting

if TYPE_CHECKING:
    import redis.asyncio as redis

URL_EXAMPLE = "redis://localhost:6379/0"


@dataclass
class RedisBackend:
    """A Redis to keep chat history in; `new_client()` opens another connection to the same data."""

    url: str | None
    fake_server: Any = field(default=None, repr=False)  # a fakeredis.FakeServer when url is None

    @property
    def description(self) -> str:
        return f"Redis at {masked_url(self.url)}" if self.url else "fakeredis (in-process)"

    def new_client(self) -> redis.Redis:
        if self.url:
            import redis.asyncio as redis

            return redis.from_url(self.url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=self.fake_server, decode_responses=True)

    async def check(self) -> None:
        """Fail with one line naming REDIS_URL and what went wrong when the configured server cannot be used."""
        if not self.url:
            return
        from redis.exceptions import AuthenticationError, RedisError, ResponseError

        client = self.new_client()
        try:
            await client.ping()
        except AuthenticationError as error:
            raise SampleError(self._auth_problem(str(error))) from None
        except ResponseError as error:
            if "DB index" in str(error):
                database = urlsplit(self.url).path.strip("/") or "0"
                raise SampleError(
                    f"Redis at REDIS_URL={masked_url(self.url)} has no database {database} ({error}): use an index "
                    "below the server's `databases` setting (16 by default)"
                ) from None
            raise SampleError(
                f"Redis at REDIS_URL={masked_url(self.url)} refused the connection ({one_line(str(error), 200)})"
            ) from None
        except (RedisError, OSError) as error:
            raise SampleError(
                f"cannot reach Redis at REDIS_URL={masked_url(self.url)} ({one_line(str(error), 200)}): "
                f"{self._start_hint()}"
            ) from None
        finally:
            await client.aclose()

    def _auth_problem(self, message: str) -> str:
        where = f"Redis at REDIS_URL={masked_url(self.url or '')}"
        parts = urlsplit(self.url or "")
        if parts.password is None and "password" not in dict(parse_qsl(parts.query)):
            return (
                f"{where} requires a password ({one_line(message, 200)}): put it in REDIS_URL, e.g. "
                "redis://:PASSWORD@host:port/0"
            )
        return f"{where} refused the user name or password ({one_line(message, 200)}): check them in REDIS_URL"

    def _start_hint(self) -> str:
        port = urlsplit(self.url or "").port or 6379
        return f"start one with `redis-server --port {port}` or unset REDIS_URL to use the in-process fakeredis"


def select_redis() -> RedisBackend:
    """`REDIS_URL` from the environment / `.env`, or one fakeredis server shared by all clients of this process."""
    load_settings()
    if url := setting("REDIS_URL"):
        validate_redis_url(url)
        return RedisBackend(url)
    import fakeredis

    return RedisBackend(None, fakeredis.FakeServer())


def validate_redis_url(url: str) -> None:
    """One line naming REDIS_URL when it is not a Redis URL the client can use."""
    shown = masked_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise SampleError(f"REDIS_URL={shown} is not a valid URL ({error}): use e.g. {URL_EXAMPLE}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SampleError(f"REDIS_URL={shown} is not a Redis URL: use e.g. {URL_EXAMPLE} (or rediss:// for TLS)")
    if parts.scheme != "unix" and not parts.hostname:
        raise SampleError(f"REDIS_URL={shown} names no host: use e.g. {URL_EXAMPLE}")
    if port == 0:
        raise SampleError(f"REDIS_URL={shown} has port 0: use the server's port, e.g. {URL_EXAMPLE}")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise SampleError(f"REDIS_URL={shown} names database {database!r}: it must be a number, e.g. {URL_EXAMPLE}")
