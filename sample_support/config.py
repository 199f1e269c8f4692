"""Settings from the environment (and an optional `.env` file), and the one-line error path.

Every sample calls `run_sample(main(...))`: a `SampleError` (a missing setting, an unreachable
service, a corrupt saved session), a failing model service or Redis is printed as one `error: ...` line
and the process exits 1, without a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent_framework.exceptions import ChatClientException
from dotenv import load_dotenv
from redis.exceptions import RedisError

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
)
SERVICE_SETTINGS = ("REDIS_URL", "DTS_ENDPOINT", "DTS_TASKHUB")


class SampleError(Exception):
    """An error the reader can fix: its message is one line naming the setting or input at fault."""


def load_settings() -> None:
    """Read `.env` (next to the samples, or the file named by SAMPLES_ENV_FILE) without overriding the environment."""
    env_file = os.environ.get(ENV_FILE_VARIABLE, str(REPO_DIR / ".env"))
    if env_file and Path(env_file).is_file():
        load_dotenv(env_file, override=False)


def setting(name: str) -> str | None:
    """The value of an environment variable, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def run_sample(main: Coroutine[Any, Any, None]) -> None:
    """Run a sample's `main()`; turn a `SampleError` into one line on stderr and exit status 1."""
    try:
        asyncio.run(main)
    except SampleError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except ChatClientException as error:
        # A wrong key, an unknown model or an unreachable endpoint: the reader fixes a setting, not the code.
        message = error.args[0] if error.args and isinstance(error.args[0], str) else type(error).__name__
        detail = message.splitlines()[0][:300]
        print(
            f"error: the model service failed ({detail}): check OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL "
            "or AZURE_OPENAI_ENDPOINT / AZURE_OPENAI_MODEL",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    except RedisError as error:
        # The start-up check passed, so Redis went away (or refused a command) during the run.
        print(f"error: Redis failed during the run ({error}): check REDIS_URL and the server", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
