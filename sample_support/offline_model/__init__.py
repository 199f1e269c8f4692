"""A deterministic offline chat model behind a real OpenAI-compatible HTTP endpoint.

The samples build the real Agent Framework clients (`OpenAIChatCompletionClient` -> `POST /v1/chat/completions`,
`OpenAIChatClient` -> `POST /v1/responses`) and, when no real model is configured, point them at this server.
Everything between the sample and the "model" is therefore the real code path: the openai SDK, HTTP, SSE
streaming, tool calls, and for the Responses API a service-side response chain (`previous_response_id`).

The model is honest: it answers only from the messages it is sent (plus, for the Responses API, the stored
response chain the request points at). Like the real service it answers HTTP 400 for requests the real service
rejects or that only work by accident: tool results without a matching call, tool calls without results, an
unknown `previous_response_id`, history sent twice, a missing model name and malformed JSON.

- `replies`: what the model answers (facts and recall, jokes, introductions, summaries; `facts` holds the facts
  and the summary format), `tools`: which tool a question needs, its arguments, answers from tool results;
- `chat_completions` and `responses`: the two wire protocols (`protocol`: what they share);
- `server`: the HTTP server (`OfflineModelServer`, with `observers` told about every answered request) and the
  process-wide instance `offline_model_server()`.

Only the standard library is used; the server runs in daemon threads and logs nothing.
"""

from .conversation import Reply, ToolCall, ToolSpec, Turn
from .facts import SUMMARY_PREFIX
from .replies import compose_reply
from .server import Exchange, Observer, OfflineModelServer, offline_model_server

OFFLINE_MODEL_NAME = "offline-model"

__all__ = [
    "OFFLINE_MODEL_NAME",
    "SUMMARY_PREFIX",
    "Exchange",
    "Observer",
    "OfflineModelServer",
    "Reply",
    "ToolCall",
    "ToolSpec",
    "Turn",
    "compose_reply",
    "offline_model_server",
]
