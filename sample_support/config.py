"""Settings from the environment (and an optional `.env` file), and the one-line error path.

Every sample calls `run_sample(main(...), errors=(...))`. An error the reader can fix is printed as one
`error: ...` line on stderr and the process exits 1, without a traceback: a `SampleError` (a missing or
malformed setting, an unreachable service), an exception of a type the sample lists in `errors` (its store's
own exception types), a failing model service, Redis or Durable Task Scheduler, an Azure sign-in that failed.
Ctrl+C exits 130 and SIGTERM 143, both after the sample's `finally` blocks ran (SIGTERM takes the same path as
Ctrl+C: it cancels `main()`); a closed stdout (`python sample.py | head -2`) ends the run quietly.

Nothing here imports the service libraries: an error is recognised by its type only if its library was already
loaded, so a sample pays only for what it uses.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REPO_DIR = Path(__file__).resolve().parent.parent
# Tests point this at an empty value so a developer's own `.env` cannot change what they run against.
ENV_FILE_VARIABLE = "SAMPLES_ENV_FILE"
# Every setting that moves a sample off its embedded default (documented in .env.example).
MODEL_SETTINGS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_MODEL",
    "OPENAI_TIMEOUT_SECONDS",
)
SERVICE_SETTINGS = ("REDIS_URL", "DTS_ENDPOINT", "DTS_TASKHUB")
START_SCHEDULER_COMMAND = "python -m sample_support.serve_scheduler --port 8080"
AZURE_LOGIN_HINT = "run `az login` (or set AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET)"
# Query parameters whose values are masked wherever a URL is printed.
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "sig", "credential")


class SampleError(Exception):
    """An error the reader can fix: its message is one line naming the setting or input at fault."""


def load_settings() -> None:
    """Read `.env` (next to the samples, or the file named by SAMPLES_ENV_FILE) without overriding the environment."""
    env_file = os.environ.get(ENV_FILE_VARIABLE, str(REPO_DIR / ".env"))
    if not env_file or not Path(env_file).is_file():
        return
    from dotenv import load_dotenv

    try:
        load_dotenv(env_file, override=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SampleError(
            f"cannot read the settings file {env_file}: it is not UTF-8 text (byte {error.object[error.start]:#04x} "
            f"at offset {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise SampleError(f"cannot read the settings file {env_file}: {error.strerror or error}") from None


def setting(name: str) -> str | None:
    """The value of an environment variable, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def masked_url(url: str) -> str:
    """`url` with every credential replaced by `***`: the password of `user:password@`, and query parameters
    such as `?password=...`. Text that is not a URL comes back unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    masked = [(key, "***" if any(word in key.lower() for word in _SECRET_WORDS) else value) for key, value in pairs]
    if password is None and masked == pairs:
        return url  # nothing to hide: shown exactly as given
    query = urlencode(masked, safe="*") if pairs else parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def quiet_azure_logging() -> None:
    """azure-identity logs every credential it tried (a dozen lines) before raising; the error line says it once."""
    for name in ("azure.identity", "azure.core"):
        logging.getLogger(name).setLevel(logging.ERROR)


def azure_credential() -> Any:
    """`DefaultAzureCredential` (an `az login`, a managed identity, AZURE_CLIENT_ID/...), without its log output."""
    quiet_azure_logging()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def run_sample(main: Coroutine[Any, Any, Any], *, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a sample's `main()`; turn an error the reader can fix into one `error: ...` line and exit status 1.

    `errors` lists the sample's own exception types (e.g. its store's): they are reported by their message.
    Any other exception is a bug in the sample and keeps its traceback."""
    received: list[int] = []
    if not (sys.flags.dev_mode or sys.warnoptions):  # a run checking for leaks (-X dev, -W) keeps the full collection
        atexit.register(gc.freeze)  # exiting then skips collecting every object the imports made (~0.2 s)
    try:
        _run(main, received)
    except KeyboardInterrupt:
        raise SystemExit(128 + (received[-1] if received else signal.SIGINT)) from None
    except BrokenPipeError:
        _quiet_closed_stdout()
        raise SystemExit(1) from None
    except Exception as error:
        line = error_line(error, errors)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _run(main: Coroutine[Any, Any, Any], received: list[int]) -> None:
    async def main_with_sigterm() -> None:
        # asyncio.run() (Python 3.11+) turns the first Ctrl+C into a cancellation of this task, so `finally` blocks and
        # `async with` exits run; SIGTERM (a deployment stopping the process) takes the same path.
        interrupt = signal.getsignal(signal.SIGINT)

        def on_sigterm(signum: int, frame: Any) -> None:
            received.append(signum)
            if callable(interrupt):
                interrupt(signum, frame)
            else:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            await main
        except BaseException as error:
            # Python 3.10's asyncio.run() raises the KeyboardInterrupt inside whatever task runs (on its way out of
            # the loop already); a task group (httpx's connect) then fails this task with a group of it at shutdown.
            if not (sys.version_info < (3, 11) and getattr(error, "exceptions", None) and _only_interrupts(error)):
                raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    asyncio.run(main_with_sigterm())
    sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit


def _only_interrupts(error: BaseException) -> bool:
    """A KeyboardInterrupt, or an exception group made only of them."""
    inner = getattr(error, "exceptions", None)
    return isinstance(error, KeyboardInterrupt) if inner is None else all(map(_only_interrupts, inner))


def _quiet_closed_stdout() -> None:
    # The reader of our output went away: point stdout at /dev/null so the final flush at exit cannot fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def error_line(error: BaseException, errors: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one line that explains `error` to the reader, or None when it is not an error the reader can fix."""
    for leaf in _leaves(error):
        if isinstance(leaf, SampleError) or (errors and isinstance(leaf, errors)):
            return one_line(str(leaf)) or type(leaf).__name__
        for explain in (_azure_sign_in_line, _model_line, _redis_line, _scheduler_line):
            line = explain(leaf)
            if line is not None:
                return line
    return None


def one_line(text: str, limit: int = 400) -> str:
    """`text` on one line (whitespace runs collapsed), cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[: limit - 3]}..."


def _leaves(error: BaseException) -> list[BaseException]:
    """`error` itself, or the exceptions inside an exception group (asyncio.TaskGroup raises those)."""
    inner = getattr(error, "exceptions", None)
    if isinstance(inner, tuple) and all(isinstance(item, BaseException) for item in inner):
        return [leaf for item in inner for leaf in _leaves(item)]
    return [error]


def _is(error: BaseException, module: str, name: str) -> bool:
    """isinstance(error, module.name), without importing `module`: an error of a library never loaded is not one."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(error, cls)


def _azure_sign_in_line(error: BaseException) -> str | None:
    if not _is(error, "azure.core.exceptions", "ClientAuthenticationError"):
        return None
    users = []
    if setting("AZURE_OPENAI_ENDPOINT") and not setting("AZURE_OPENAI_API_KEY") and not setting("OPENAI_API_KEY"):
        users.append("AZURE_OPENAI_ENDPOINT (or set AZURE_OPENAI_API_KEY)")
    if (setting("DTS_ENDPOINT") or "").lower().startswith("https://"):
        users.append("DTS_ENDPOINT (or unset it to use the embedded scheduler)")
    needed = f" for {' and '.join(users)}" if users else ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"Azure sign-in failed{needed} ({one_line(first, 200)}): {AZURE_LOGIN_HINT}"


def model_settings_hint() -> str:
    if setting("OPENAI_API_KEY"):
        return "OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL"
    if setting("AZURE_OPENAI_ENDPOINT"):
        return "AZURE_OPENAI_ENDPOINT / AZURE_OPENAI_MODEL / AZURE_OPENAI_API_KEY"
    return "OPENAI_API_KEY / OPENAI_MODEL or AZURE_OPENAI_ENDPOINT / AZURE_OPENAI_MODEL"


def _model_line(error: BaseException) -> str | None:
    if not _is(error, "agent_framework.exceptions", "ChatClientException"):
        return None
    inner = next((arg for arg in error.args[1:] if isinstance(arg, BaseException)), None) or error.__cause__
    if inner is not None and _is(inner, "azure.core.exceptions", "ClientAuthenticationError"):
        return _azure_sign_in_line(inner)
    hint = model_settings_hint()
    if inner is not None and _is(inner, "openai", "APITimeoutError"):
        from .model import request_timeout_seconds

        return (
            f"the model service did not answer within {request_timeout_seconds():g} s (OPENAI_TIMEOUT_SECONDS): "
            f"check {hint} and that the endpoint is up"
        )
    if inner is not None and _is(inner, "openai", "APIConnectionError"):
        return f"cannot reach the model service ({_detail(inner)}): check {hint}"
    is_status = inner is not None and _is(inner, "openai", "APIStatusError")
    status = getattr(inner, "status_code", None) if is_status else None
    detail = _detail(inner) if inner is not None else _detail(error)
    if status in (400, 422):
        return (
            f"the model service rejected the request (HTTP {status}: {detail}): the conversation history or saved "
            "session sent with it may be corrupt"
        )
    if status in (401, 403):
        return f"the model service refused the credentials (HTTP {status}: {detail}): check {hint}"
    if status == 404:
        return f"the model service does not know the model or endpoint (HTTP 404: {detail}): check {hint}"
    if status == 429:
        return f"the model service is rate limiting or out of quota (HTTP 429: {detail}): wait and retry"
    where = f"HTTP {status}: " if status else ""
    return f"the model service failed ({where}{detail}): check {hint}"


def _detail(error: BaseException) -> str:
    """The service's own message, once, without the client's class repr."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message.strip():
            return one_line(message, 300)
    text = str(error.args[0]) if error.args else str(error)
    # ChatClientException's message reads "<class '...'> service failed to complete the prompt: <detail>".
    text = text.split("failed to complete the prompt: ", 1)[-1]
    text = text.removeprefix("Error code: ")
    return one_line(text, 300) or type(error).__name__


def _redis_line(error: BaseException) -> str | None:
    if not _is(error, "redis.exceptions", "RedisError"):
        return None
    # The start-up check passed, so Redis went away (or refused a command) during the run.
    url = masked_url(setting("REDIS_URL") or "")
    return f"Redis failed during the run ({one_line(str(error), 300)}): check REDIS_URL={url} and the server"


def _scheduler_line(error: BaseException) -> str | None:
    if not _is(error, "grpc", "RpcError"):
        return None
    code = error.code() if callable(getattr(error, "code", None)) else None
    name = getattr(code, "name", "")
    if name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    endpoint = setting("DTS_ENDPOINT")
    where = f"at DTS_ENDPOINT={masked_url(endpoint)}" if endpoint else "(embedded)"
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return f"the Durable Task Scheduler {where} refused the credentials ({name}: {one_line(details, 200)}): " + (
            f"{AZURE_LOGIN_HINT}, with access to task hub DTS_TASKHUB"
        )
    return (
        f"the Durable Task Scheduler {where} stopped answering ({name}: {one_line(details, 200)}): check that it "
        f"runs (`{START_SCHEDULER_COMMAND}`, or the DTS emulator) and that DTS_ENDPOINT points at it"
    )
