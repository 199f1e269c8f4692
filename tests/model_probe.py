"""What the offline model answered while tests ran, observed through the server's `observers` hook.

The conftest fixture `offline_model` is a `ModelProbe` on the process-wide server (`offline_model_server()`), the one
the samples' clients and the worker processes a test starts (they inherit its base URL) send their requests to.
"""

from __future__ import annotations

import json
import threading
from types import TracebackType
from typing import Any

from sample_support.offline_model import SUMMARY_PREFIX, Exchange, OfflineModelServer


class ModelProbe:
    """Counts a server's answers: its HTTP 400s, the tool calls and summaries it emitted, and every request."""

    def __init__(self, server: OfflineModelServer) -> None:
        self.server = server
        self.rejections: list[str] = []  # the message of every HTTP 400, in order
        self._tool_calls: list[tuple[str, dict[str, Any]]] = []
        self._summaries: list[str] = []
        self._requests = 0
        self._lock = threading.Lock()
        server.observers.append(self._observe)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def requests_served(self) -> int:
        """Requests answered (any path, any status) since the probe was attached."""
        with self._lock:
            return self._requests

    def tool_calls_emitted(self) -> list[tuple[str, dict[str, Any]]]:
        """(tool name, arguments) of every tool call the model emitted, in order."""
        with self._lock:
            return list(self._tool_calls)

    def summaries_written(self) -> list[str]:
        """Every summary the model wrote for a summarizer (agent_framework's `SummarizationStrategy`), in order."""
        with self._lock:
            return list(self._summaries)

    def close(self) -> None:
        self.server.observers.remove(self._observe)

    def __enter__(self) -> ModelProbe:
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _observe(self, exchange: Exchange) -> None:
        reply = exchange.reply
        with self._lock:
            self._requests += 1
            if exchange.status == 400 and exchange.error is not None:
                self.rejections.append(exchange.error)
            if reply is not None and reply.tool_call is not None:
                self._tool_calls.append((reply.tool_call.name, json.loads(reply.tool_call.arguments)))
            if reply is not None and reply.text.startswith(SUMMARY_PREFIX):
                self._summaries.append(reply.text)
