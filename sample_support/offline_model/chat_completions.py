"""The Chat Completions API (`POST /v1/chat/completions`): the client sends the whole history every time."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .conversation import Reply, ToolCall, Turn
from .protocol import (
    Answer,
    RequestRejected,
    check_tool_pairs,
    require_model,
    stream_pieces,
    text_of,
    tools_from,
    word_count,
)
from .replies import compose_reply

_ROLES = ("system", "developer", "user", "assistant", "tool")


def answer(body: dict[str, Any]) -> tuple[Answer, Reply]:
    """The answer to one request body, and the reply it carries."""
    model = require_model(body)
    turns = _chat_turns(body.get("messages"))
    reply = compose_reply(turns, tools_from(body, nested=True))
    reply_words = word_count(reply.text or (reply.tool_call.arguments if reply.tool_call else ""))
    usage = _usage(sum(word_count(turn.text) for turn in turns), reply_words)
    if not body.get("stream"):
        return Answer(body=_chat_completion(model, reply, usage)), reply
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = _chat_chunks(model, reply, usage if include_usage else None)
    return Answer(events=[*((None, json.dumps(chunk)) for chunk in chunks), (None, "[DONE]")]), reply


def _chat_turns(messages: Any) -> list[Turn]:
    if not isinstance(messages, list) or not messages:
        raise RequestRejected("'messages' must be a non-empty array.", "messages")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise RequestRejected(f"Invalid message at index {index}: unknown or missing role.", f"messages.[{index}]")
        role = "system" if message["role"] == "developer" else message["role"]
        calls = tuple(
            ToolCall(
                call.get("id", ""),
                call.get("function", {}).get("name", ""),
                call.get("function", {}).get("arguments", ""),
            )
            for call in message.get("tool_calls") or []
        )
        turns.append(
            Turn(role, text_of(message.get("content")), calls, message.get("tool_call_id"), message.get("name"))
        )
    check_tool_pairs(turns, responses_api=False)
    return turns


def _usage(prompt_words: int, reply_words: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": reply_words,
        "total_tokens": prompt_words + reply_words,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_completion(model: str, reply: Reply, usage: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_call:
        call = reply.tool_call
        message["tool_calls"] = [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_call else "stop",
            }
        ],
        "usage": usage,
    }


def _chat_chunks(model: str, reply: Reply, usage: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant", "content": ""})
    if reply.tool_call:
        call = reply.tool_call
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        middle = len(call.arguments) // 2
        for piece in (call.arguments[:middle], call.arguments[middle:]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
    else:
        for piece in stream_pieces(reply.text):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
    if usage is not None:
        yield {**base, "choices": [], "usage": usage}
