"""Which chat model the samples talk to: real OpenAI, Azure OpenAI, or the offline model.

The samples always construct the real framework clients (`OpenAIChatCompletionClient`,
`OpenAIChatClient`); this module only decides what to pass them:

- `OPENAI_API_KEY` (+ `OPENAI_MODEL`, optional `OPENAI_BASE_URL`) -> OpenAI;
- `AZURE_OPENAI_ENDPOINT` (+ `AZURE_OPENAI_MODEL`, and `AZURE_OPENAI_API_KEY` or an Entra ID login
  found by `azure-identity`'s `DefaultAzureCredential`) -> Azure OpenAI, through its OpenAI-compatible
  `/openai/v1/` API (the one both the Chat Completions and the Responses client can use);
- nothing -> the deterministic offline model, served on a loopback port by this process.

Every client gets an `openai.AsyncOpenAI` of its own with a request timeout of `OPENAI_TIMEOUT_SECONDS`
(default 60) and no automatic retries, so a model that never answers is one error line within that time.
A sample closes it with `await chat_client.client.close()`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .config import AZURE_LOGIN_HINT, SampleError, azure_credential, load_settings, one_line, setting

TIMEOUT_SETTING = "OPENAI_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 60.0
AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"


def request_timeout_seconds() -> float:
    """`OPENAI_TIMEOUT_SECONDS`: how long one model request may take (default 60)."""
    raw = setting(TIMEOUT_SETTING)
    if raw is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise SampleError(f"{TIMEOUT_SETTING}={raw} is not a positive number of seconds (e.g. 60)")
    return seconds


@dataclass(frozen=True)
class ModelBackend:
    """The model a sample uses; `client_kwargs()` goes straight into an OpenAI client's constructor.

    `kwargs` holds `model` plus what reaches the endpoint: `base_url` and `api_key` (a key, or a function
    returning an Entra ID token). `client_kwargs()` turns them into a fresh `openai.AsyncOpenAI` each call."""

    kind: str  # "offline", "openai" or "azure"
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def client_kwargs(self) -> dict[str, Any]:
        from openai import AsyncOpenAI

        connection = {name: value for name, value in self.kwargs.items() if name != "model"}
        client = AsyncOpenAI(**connection, timeout=self.timeout, max_retries=0)
        return {"model": self.kwargs["model"], "async_client": client}


def select_model() -> ModelBackend:
    """Choose the model from the environment / `.env`; start the offline model when nothing is configured."""
    load_settings()
    timeout = request_timeout_seconds()
    if setting("OPENAI_API_KEY"):
        model = setting("OPENAI_MODEL")
        if not model:
            raise SampleError("OPENAI_API_KEY is set but OPENAI_MODEL is not: set OPENAI_MODEL (e.g. gpt-4o-mini)")
        base_url = setting("OPENAI_BASE_URL")
        kwargs = {"model": model, "api_key": setting("OPENAI_API_KEY"), "base_url": base_url}
        return ModelBackend("openai", f"OpenAI {model} ({base_url or 'api.openai.com'})", kwargs, timeout)
    if endpoint := setting("AZURE_OPENAI_ENDPOINT"):
        model = setting("AZURE_OPENAI_MODEL")
        if not model:
            raise SampleError(
                "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_MODEL is not: set it to your deployment name"
            )
        base_url = f"{endpoint.rstrip('/').removesuffix('/openai/v1')}/openai/v1/"
        api_key: str | Callable[[], Awaitable[str]]
        if key := setting("AZURE_OPENAI_API_KEY"):
            api_key, auth = key, "API key"
        else:
            api_key, auth = entra_id_token_provider(), "Entra ID"
        kwargs = {"model": model, "api_key": api_key, "base_url": base_url}
        return ModelBackend("azure", f"Azure OpenAI {model} ({endpoint}, {auth})", kwargs, timeout)
    return offline_model(timeout)


def offline_model(timeout: float = DEFAULT_TIMEOUT_SECONDS) -> ModelBackend:
    """The offline model (its server started on first use), whatever the environment configures."""
    from .offline_model import OFFLINE_MODEL_NAME, offline_model_server

    server = offline_model_server()
    kwargs = {"model": OFFLINE_MODEL_NAME, "api_key": "offline", "base_url": server.base_url}
    return ModelBackend("offline", f"offline model at {server.base_url}", kwargs, timeout)


def entra_id_token_provider() -> Callable[[], Awaitable[str]]:
    """An Entra ID token for Azure OpenAI from `DefaultAzureCredential`, checked once now so a missing login is one
    line at start-up rather than a failure at the first model call."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import get_bearer_token_provider

    provider = get_bearer_token_provider(azure_credential(), AZURE_OPENAI_SCOPE)
    try:
        provider()
    except ClientAuthenticationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SampleError(
            f"Azure sign-in failed for AZURE_OPENAI_ENDPOINT ({one_line(first, 200)}): {AZURE_LOGIN_HINT}, "
            "or set AZURE_OPENAI_API_KEY"
        ) from None

    async def token() -> str:
        # The credential may run `az` in a subprocess: keep the event loop free meanwhile.
        return await asyncio.to_thread(provider)

    return token
