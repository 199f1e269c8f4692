"""What both wire protocols share: the 400 a request earns, message text, offered tools, tool call pairing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .conversation import ToolSpec, Turn


class RequestRejected(Exception):
    """A request the real service would answer with HTTP 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class Answer:
    """What to send back: a JSON body, or a list of SSE payloads."""

    status: int = 200
    body: dict[str, Any] | None = None
    events: list[tuple[str | None, str]] | None = None  # (event name, data)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def text_of(content: Any) -> str:
    """Text of a message content: a string, or a list of text parts (non-text parts are ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text")
        )
    raise RequestRejected("Message content must be a string or a list of content parts.", "content")


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRejected("you must provide a model parameter", "model")
    return model


def word_count(text: str) -> int:
    return len(text.split())


def stream_pieces(text: str) -> list[str]:
    """Word-sized pieces of `text` for streaming (their concatenation is `text`)."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def tools_from(body: dict[str, Any], *, nested: bool) -> list[ToolSpec]:
    """Function tools in the request (`nested`: Chat Completions' {"function": {...}} shape)."""
    if body.get("tool_choice") == "none":
        return []
    tools = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        spec = tool.get("function", {}) if nested else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            tools.append(ToolSpec(spec["name"], spec.get("parameters") or {}))
    return tools


def check_tool_pairs(turns: Sequence[Turn], *, responses_api: bool) -> None:
    """Every tool result answers an earlier call in the conversation, and every call gets a result."""
    called: dict[str, None] = {}  # ordered, for a stable error message
    answered: set[str] = set()
    for index, turn in enumerate(turns):
        called.update((call.call_id, None) for call in turn.tool_calls)
        if turn.tool_call_id is None:
            continue
        if turn.tool_call_id not in called:
            if responses_api:
                raise RequestRejected(
                    f"No tool call found for function call output with call_id {turn.tool_call_id}.", "input"
                )
            raise RequestRejected(
                "Invalid parameter: messages with role 'tool' must be a response to a preceding message with "
                f"'tool_calls' (no tool call with id '{turn.tool_call_id}' precedes it).",
                f"messages.[{index}].role",
            )
        answered.add(turn.tool_call_id)
    unanswered = [call_id for call_id in called if call_id not in answered]
    if unanswered and responses_api:
        raise RequestRejected(f"No tool output found for function call {unanswered[0]}.", "input")
    if unanswered:
        raise RequestRejected(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(unanswered)}",
            "messages",
        )
