"""The Responses API (`POST /v1/responses`), with its stored chains: `store` keeps each response, and a request
naming `previous_response_id` continues that chain, sending only the new items."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .conversation import Reply, ToolCall, Turn, quote
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


@dataclass
class _StoredResponse:
    previous_response_id: str | None
    turns: list[Turn]  # this response's input items followed by its output items


class ResponsesEndpoint:
    """Answers Responses API requests and keeps the stored responses (`store: true`), each linked to its previous."""

    def __init__(self) -> None:
        self._responses: dict[str, _StoredResponse] = {}
        self._lock = threading.Lock()

    def answer(self, body: dict[str, Any]) -> tuple[Answer, Reply]:
        """The answer to one request body, and the reply it carries."""
        model = require_model(body)
        if body.get("conversation"):
            raise RequestRejected(
                "The offline model does not support 'conversation'; use previous_response_id.", "conversation"
            )
        previous_id = body.get("previous_response_id")
        chain = self._chain(previous_id) if previous_id else []
        new_turns = _input_turns(body.get("input"))
        if previous_id:
            _check_no_replay(new_turns, chain, previous_id)
        turns = [*chain, *new_turns]
        check_tool_pairs(turns, responses_api=True)
        instructions = body.get("instructions")
        visible = [Turn("system", instructions), *turns] if isinstance(instructions, str) and instructions else turns
        reply = compose_reply(visible, tools_from(body, nested=False))
        item = _output_item(reply)
        response_id = f"resp_{uuid.uuid4().hex}"
        if body.get("store", True) is not False:
            output_turn = Turn(
                "assistant", reply.text, (reply.tool_call,) if reply.tool_call else (), item_id=item["id"]
            )
            with self._lock:
                self._responses[response_id] = _StoredResponse(previous_id, [*new_turns, output_turn])
        input_words = sum(word_count(turn.text) for turn in visible)
        output_words = word_count(reply.text or (reply.tool_call.arguments if reply.tool_call else ""))
        usage = {
            "input_tokens": input_words,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_words,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_words + output_words,
        }
        response = _response_object(response_id, model, body, [item], usage)
        if not body.get("stream"):
            return Answer(body=response), reply
        events = [(event["type"], json.dumps(event)) for event in _response_events(response, item)]
        return Answer(events=events), reply

    def _chain(self, response_id: str) -> list[Turn]:
        """Every turn of the conversation that ends with `response_id`, oldest first."""
        with self._lock:
            if response_id not in self._responses:
                raise RequestRejected(
                    f"Previous response with id '{response_id}' not found.",
                    "previous_response_id",
                    "previous_response_not_found",
                )
            pieces = []
            current: str | None = response_id
            while current is not None:
                stored = self._responses[current]
                pieces.append(stored.turns)
                current = stored.previous_response_id
        return [turn for piece in reversed(pieces) for turn in piece]


def _input_turns(input_value: Any) -> list[Turn]:
    if isinstance(input_value, str):
        return [Turn("user", input_value)]
    if not isinstance(input_value, list) or not input_value:
        raise RequestRejected("'input' must be a string or a non-empty array of input items.", "input")
    turns = []
    for index, item in enumerate(input_value):
        if not isinstance(item, dict):
            raise RequestRejected(f"Invalid input item at index {index}.", f"input[{index}]")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("system", "developer", "user", "assistant"):
            role = "system" if item["role"] == "developer" else item["role"]
            turns.append(Turn(role, text_of(item.get("content")), item_id=item.get("id")))
        elif kind == "function_call":
            call = ToolCall(item.get("call_id", ""), item.get("name", ""), item.get("arguments", ""))
            turns.append(Turn("assistant", tool_calls=(call,), item_id=item.get("id")))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else text_of(output)
            turns.append(Turn("tool", text, tool_call_id=item.get("call_id", ""), item_id=item.get("id")))
        else:
            raise RequestRejected(
                f"The offline model does not support input items of type '{kind}' (role {item.get('role')!r}).",
                f"input[{index}]",
            )
    return turns


def _check_no_replay(new_turns: Sequence[Turn], chain: Sequence[Turn], previous_response_id: str) -> None:
    """Reject input that re-sends items the previous_response_id chain already holds ("double history").

    A repeated *question* is legitimate ("hello" three times), so the last user message is exempt; system
    messages (instructions) are exempt too. Anything else identical to a stored item is a replay.
    """
    stored_ids = {turn.item_id for turn in chain if turn.item_id}
    stored = {turn.fingerprint() for turn in chain if turn.role != "system"}
    last_user = max((i for i, turn in enumerate(new_turns) if turn.role == "user"), default=-1)
    for index, turn in enumerate(new_turns):
        replayed_id = turn.item_id in stored_ids
        replayed_item = turn.role != "system" and index != last_user and turn.fingerprint() in stored
        if replayed_id or replayed_item:
            what = f"item '{turn.item_id}'" if replayed_id else f"{turn.role} item {quote(_describe_item(turn))!r}"
            raise RequestRejected(
                f"input[{index}] ({what}) is already part of the conversation stored under previous_response_id "
                f"'{previous_response_id}': the history was sent twice. With previous_response_id send only new "
                "items; to manage history yourself, send the full history with store=false and no "
                "previous_response_id.",
                f"input[{index}]",
                "duplicate_history",
            )


def _describe_item(turn: Turn) -> str:
    if turn.tool_calls:
        return f"function_call {turn.tool_calls[0].call_id}"
    if turn.tool_call_id is not None:
        return f"function_call_output {turn.tool_call_id}"
    return turn.text


class _SequencedEvents:
    """Responses API stream events, numbered in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, event_type: str, **fields: Any) -> None:
        self.events.append({"type": event_type, "sequence_number": len(self.events), **fields})


def _response_object(
    response_id: str, model: str, body: dict[str, Any], output: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": output,
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True) is not False,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "usage": usage,
        "error": None,
        "incomplete_details": None,
        "conversation": None,
        "background": False,
        "reasoning": {"effort": None, "summary": None},
        "max_output_tokens": body.get("max_output_tokens"),
        "user": None,
    }


def _output_item(reply: Reply) -> dict[str, Any]:
    if reply.tool_call:
        call = reply.tool_call
        return {
            "id": f"fc_{uuid.uuid4().hex}",
            "type": "function_call",
            "status": "completed",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        }
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}],
    }


def _response_events(response: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events that deliver `response` (whose single output item is `item`)."""
    events = _SequencedEvents()
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events.add("response.created", response=pending)
    events.add("response.in_progress", response=pending)
    common = {"output_index": 0, "item_id": item["id"]}
    if item["type"] == "function_call":
        events.add(
            "response.output_item.added", output_index=0, item={**item, "status": "in_progress", "arguments": ""}
        )
        arguments = item["arguments"]
        middle = len(arguments) // 2
        for piece in (arguments[:middle], arguments[middle:]):
            events.add("response.function_call_arguments.delta", **common, delta=piece)
        events.add("response.function_call_arguments.done", **common, name=item["name"], arguments=arguments)
    else:
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.add("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
        events.add("response.content_part.added", **common, content_index=0, part=part)
        for piece in stream_pieces(text):
            events.add("response.output_text.delta", **common, content_index=0, delta=piece, logprobs=[])
        events.add("response.output_text.done", **common, content_index=0, text=text, logprobs=[])
        events.add("response.content_part.done", **common, content_index=0, part={**part, "text": text})
    events.add("response.output_item.done", output_index=0, item=item)
    events.add("response.completed", response=response)
    return events.events
