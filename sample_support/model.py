"""Which chat model the samples talk to: real OpenAI, Azure OpenAI, or the offline model.

The samples always construct the real framework clients (`OpenAIChatCompletionClient`,
`OpenAIChatClient`); this module only decides what to pass them:

- `OPENAI_API_KEY` (+ `OPENAI_MODEL`, optional `OPENAI_BASE_URL`) -> OpenAI;
- `AZURE_OPENAI_ENDPOINT` (+ `AZURE_OPENAI_MODEL`, and `AZURE_OPENAI_API_KEY` or an Entra ID login
  found by `azure-identity`'s `DefaultAzureCredential`) -> Azure OpenAI;
- nothing -> the deterministic offline model, served on a loopback port by this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import SampleError, load_settings, setting


@dataclass(frozen=True)
class ModelBackend:
    """The model a sample uses; `client_kwargs()` goes straight into an OpenAI client's constructor."""

    kind: str  # "offline", "openai" or "azure"
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def client_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)


def select_model() -> ModelBackend:
    """Choose the model from the environment / `.env`; start the offline model when nothing is configured."""
    load_settings()
    if setting("OPENAI_API_KEY"):
        model = setting("OPENAI_MODEL")
        if not model:
            raise SampleError("OPENAI_API_KEY is set but OPENAI_MODEL is not: set OPENAI_MODEL (e.g. gpt-4o-mini)")
        where = setting("OPENAI_BASE_URL") or "api.openai.com"
        # The API key and base URL are read from the environment by the client itself.
        return ModelBackend("openai", f"OpenAI {model} ({where})", {"model": model})
    if endpoint := setting("AZURE_OPENAI_ENDPOINT"):
        model = setting("AZURE_OPENAI_MODEL")
        if not model:
            raise SampleError(
                "AZURE_OPENAI_ENDPOINT is set but AZURE_OPENAI_MODEL is not: set it to your deployment name"
            )
        kwargs: dict[str, Any] = {"model": model, "azure_endpoint": endpoint}
        if api_key := setting("AZURE_OPENAI_API_KEY"):
            kwargs["api_key"] = api_key
            auth = "API key"
        else:
            from azure.identity import DefaultAzureCredential

            kwargs["credential"] = DefaultAzureCredential()
            auth = "Entra ID"
        return ModelBackend("azure", f"Azure OpenAI {model} ({endpoint}, {auth})", kwargs)
    from .offline_model import OFFLINE_MODEL_NAME, offline_model_server

    server = offline_model_server()
    return ModelBackend(
        "offline",
        f"offline model at {server.base_url}",
        {"model": OFFLINE_MODEL_NAME, "api_key": "offline", "base_url": server.base_url},
    )
