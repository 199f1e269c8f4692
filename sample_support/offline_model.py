"""A deterministic offline chat model behind a real OpenAI-compatible HTTP endpoint.

The samples build the real Agent Framework clients (`OpenAIChatCompletionClient` -> `POST /v1/chat/completions`,
`OpenAIChatClient` -> `POST /v1/responses`) and, when no real model is configured, point them at this server.
Everything between the sample and the "model" is therefore the real code path: the openai SDK, HTTP, SSE
streaming, tool calls, and for the Responses API a service-side response chain (`previous_response_id`).

The model is honest: it answers only from the messages it is sent (plus, for the Responses API, the stored
response chain the request points at). It greets and introduces itself (using the name the instructions give
it), acknowledges and recalls facts the user stated ("my name is ...", "I live in ...", "my favorite X is ..."),
summarises the visible conversation, tells jokes, calls the offered tools that fit the question
(`get_weather`, `get_time`, `calculate`, `convert_currency`, or any tool whose name words appear in the
question) and answers from their results. A question that fits a tool it was not offered gets "I don't have
a tool ...". Everything else gets a reply that quotes what it understood.

Like the real service it answers HTTP 400 (recorded in `rejections`) for requests the real service rejects or
that only work by accident: tool results without a matching call, tool calls without results, an unknown
`previous_response_id`, history sent twice (`previous_response_id` plus a replay of items the chain already
holds), a missing model name and malformed JSON.

Only the standard library is used; the server runs in daemon threads and logs nothing.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OFFLINE_MODEL_NAME = "offline-model"

# region Conversation model (independent of the wire format)


@dataclass(frozen=True)
class ToolCall:
    """A function call the model emitted (or that a request replays)."""

    call_id: str
    name: str
    arguments: str  # JSON text, as on the wire


@dataclass(frozen=True)
class Turn:
    """One message of the visible conversation, normalised from either API."""

    role: str  # "system", "user", "assistant" or "tool"
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # set on "tool" turns
    author: str | None = None  # the message's `name` (another agent), if the client sent one
    item_id: str | None = None  # Responses API item id, if the client sent one

    def fingerprint(self) -> tuple[str, ...]:
        """What makes two turns "the same item" when checking for replayed history."""
        if self.tool_call_id is not None:
            return ("tool", self.tool_call_id)
        if self.tool_calls:
            return ("call", *(call.call_id for call in self.tool_calls))
        return (self.role, self.text)


@dataclass(frozen=True)
class ToolSpec:
    """A function tool offered in the request."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What the model answers: text, or a call to one tool."""

    text: str = ""
    tool_call: ToolCall | None = None


_VALUE = r"(?P<value>[^.,!?;\n]+?)(?=\s+(?:and|but)\b|[.,!?;\n]|$)"
_FACT_STATEMENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"\bmy name is\s+{_VALUE}", re.I), "name"),
    (re.compile(rf"\bcall me\s+{_VALUE}", re.I), "name"),
    (re.compile(rf"\bi live in\s+{_VALUE}", re.I), "home"),
    (re.compile(rf"\bmy favou?rite\s+(?P<thing>[a-z][a-z ]*?)\s+is\s+{_VALUE}", re.I), "favorite"),
)
_RECALL_NAME = re.compile(r"\b(?:what(?:'s| is) my name|what my name is|(?:remember|know) my name|who am i)\b", re.I)
_RECALL_HOME = re.compile(r"\b(?:where do i live|where i live)\b", re.I)
_RECALL_FAVORITE = re.compile(
    r"\b(?:what(?:'s| is)|what are|(?:remember|know)) my favou?rite\s+(?P<thing>[a-z][a-z ]*?)\s*(?:is\b|\?|$|\.)",
    re.I,
)
_ABOUT_ME = re.compile(r"\bwhat (?:do|else do) you know about me\b", re.I)
_SUMMARY = re.compile(r"\bsummar(?:y|ise|ize)\b|\bwhat have we (?:talked|discussed|spoken)\b|\brecap\b", re.I)
_JOKE = re.compile(r"\bjokes?\b|\bmake me laugh\b|\bsomething funny\b", re.I)
_GREETING = re.compile(r"^\W*(?:hi|hello|hey|howdy|greetings|good (?:morning|afternoon|evening))\b", re.I)
_INTRODUCTION = re.compile(
    r"\b(?:who are you|introduce yourself|what(?:'s| is) your name|tell me about yourself|what can you do)\b", re.I
)
_IDENTITY_NAME = re.compile(
    r"\b(?i:you are|you're|your name is)\s+(?P<name>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"
    r"(?P<role>,\s*(?i:a|an|the)\s+[^.!?\n]+)?"
)
_IDENTITY_NAMED = re.compile(r"\b(?i:named|called)\s+(?P<name>[A-Z][\w'-]*)")
_IDENTITY_ROLE = re.compile(r"\b(?i:you are)\s+(?P<role>(?i:a|an)\s+[^.!?\n,]+)")

_WEATHER = re.compile(r"\bweather\b|\bforecast\b|\btemperature\b", re.I)
_TIME = re.compile(r"\bwhat time\b|\btime is it\b|\b(?:current|local) time\b|\bthe time\b", re.I)
_CURRENCY = re.compile(
    r"\bconvert\s+(?P<amount>\d[\d,]*(?:\.\d+)?)\s*(?P<source>[a-z]{3})\s+(?:to|into|in)\s+"
    r"(?P<target>[a-z]{3})\b",
    re.I,
)
_CALCULATION_WORDS = re.compile(r"\b(?:calculate|compute|evaluate|solve|what(?:'s| is)|how much is)\b", re.I)
_TIMES, _DIVIDED_BY = "\u00d7", "\u00f7"
_EXPRESSION = re.compile(rf"[\d(][\d\s.+\-*/{_TIMES}{_DIVIDED_BY}()^%]*[\d)]")
_PLACE = re.compile(
    r"\b(?:in|for|at|of)\s+(?P<place>[A-Za-z][\w .'/-]*?)\s*"
    r"(?=\b(?:right now|today|tonight|tomorrow|now|currently|please|and)\b|[?.!,;]|$)",
    re.I,
)
_GENERIC_NAME_WORDS = {"get", "fetch", "lookup", "look", "find", "check", "current", "search", "query", "tool"}

_JOKES = (
    "Why did the developer go broke? Because he used up all his cache.",
    "There are 10 kinds of people: those who understand binary and those who don't.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
    "A SQL query walks into a bar, goes up to two tables and asks: 'Can I join you?'",
)


@dataclass(frozen=True)
class _Fact:
    """Something the user said about themselves, e.g. key "favorite color", value "blue"."""

    key: str
    value: str

    def statement(self) -> str:
        if self.key == "name":
            return f"your name is {self.value}"
        if self.key == "home":
            return f"you live in {self.value}"
        return f"your {self.key} is {self.value}"

    def acknowledgement(self) -> str:
        if self.key == "name":
            return f"Nice to meet you, {self.value}!"
        if self.key == "home":
            return f"Good to know that you live in {self.value}."
        return f"Good to know: your {self.key} is {self.value}."


def _facts_in(text: str) -> list[_Fact]:
    facts = []
    for pattern, key in _FACT_STATEMENTS:
        for match in pattern.finditer(text):
            if key == "favorite":
                key_text = "favorite " + " ".join(match["thing"].lower().split())
                facts.append(_Fact(key_text, match["value"].strip()))
            else:
                facts.append(_Fact(key, match["value"].strip()))
    return facts


def _unknown_fact(key: str) -> str:
    if key == "name":
        return "I don't know your name yet - you haven't told me in this conversation."
    if key == "home":
        return "I don't know where you live - you haven't told me in this conversation."
    return f"I don't know your {key} - you haven't told me in this conversation."


def _quote(text: str, limit: int = 60) -> str:
    """The text on one line, shortened at a word boundary."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + "..."


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class _Conversation:
    """The visible conversation, split around the prompt (the latest user message)."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.system_text = "\n".join(turn.text for turn in turns if turn.role == "system")
        dialog = [turn for turn in turns if turn.role != "system"]
        prompt_index = max((i for i, turn in enumerate(dialog) if turn.role == "user"), default=None)
        self.prompt = dialog[prompt_index].text if prompt_index is not None else ""
        self.earlier = dialog[:prompt_index] if prompt_index is not None else dialog
        self.after_prompt = dialog[prompt_index + 1 :] if prompt_index is not None else []
        self.calls = {call.call_id: call for turn in dialog for call in turn.tool_calls}

    def facts(self) -> dict[str, _Fact]:
        """Facts from earlier user messages; a later statement wins."""
        known: dict[str, _Fact] = {}
        for turn in self.earlier:
            if turn.role == "user":
                known.update((fact.key, fact) for fact in _facts_in(turn.text))
        return known

    def tool_results_since_prompt(self) -> list[tuple[ToolCall | None, str]]:
        return [
            (self.calls.get(turn.tool_call_id or ""), turn.text) for turn in self.after_prompt if turn.role == "tool"
        ]

    def repeats_previous_exchange(self, reply_text: str) -> bool:
        """True when both the prompt and this reply repeat the previous user message and answer."""
        previous_user = next((t.text for t in reversed(self.earlier) if t.role == "user"), None)
        previous_answer = next((t.text for t in reversed(self.earlier) if t.role == "assistant" and t.text), None)
        return previous_user == self.prompt and previous_answer == reply_text

    def is_me(self, author: str | None) -> bool:
        """Whether an assistant message is this assistant's own (Agent Framework sends the agent name as `name`)."""
        return author in (None, "UnnamedAgent") or author.lower() in self.system_text.lower()

    def identity(self) -> str | None:
        """Who the instructions say the assistant is, e.g. "Ava, a friendly travel assistant"."""
        if match := _IDENTITY_NAME.search(self.system_text):
            return match["name"] + (match["role"] or "")
        if match := _IDENTITY_NAMED.search(self.system_text):
            return match["name"]
        if match := _IDENTITY_ROLE.search(self.system_text):
            return match["role"].strip()
        return None


def compose_reply(turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> Reply:
    """The model: a deterministic answer computed only from `turns` and the offered `tools`."""
    conversation = _Conversation(turns)
    results = conversation.tool_results_since_prompt()
    reply = (
        Reply(_answer_from_tool_results(results, conversation.prompt))
        if results
        else _answer_prompt(conversation, tools)
    )
    if reply.text and conversation.repeats_previous_exchange(reply.text):
        # History providers de-duplicate messages that carry no message id by content
        # (agent_framework._sessions.filter_new_messages): a repeated user message followed by a
        # repeated answer would not be stored. The position in the conversation keeps it distinct.
        position = len(conversation.earlier) + 2
        reply = Reply(f"{reply.text} (You said the same thing a moment ago - this is message {position} in our chat.)")
    return reply


def _answer_prompt(conversation: _Conversation, tools: Sequence[ToolSpec]) -> Reply:
    prompt = conversation.prompt
    if not prompt:
        return Reply(_introduce(conversation))
    if _SUMMARY.search(prompt):
        return Reply(_summarize(conversation))
    if recalled := _recall(conversation, prompt):
        return Reply(recalled)
    if facts := _facts_in(prompt):
        greeting = "Hello! " if _GREETING.search(prompt) else ""
        return Reply(greeting + " ".join(fact.acknowledgement() for fact in facts))
    if intent := _tool_intent(prompt, tools, conversation.facts().get("home")):
        return _use_tool(intent, tools)
    if _JOKE.search(prompt):
        return Reply(_JOKES[len(conversation.earlier) % len(_JOKES)])
    if _GREETING.search(prompt) or _INTRODUCTION.search(prompt):
        return Reply(_introduce(conversation))
    return Reply(
        f"You said: \"{_quote(prompt, 100)}\". I'm a simple offline model, so I can't answer that properly; "
        f"I can see {_plural(len(conversation.earlier), 'earlier message')} in this conversation."
    )


def _recall(conversation: _Conversation, prompt: str) -> str | None:
    """Answer a question about a fact the user stated earlier, or None if the prompt asks no such thing."""
    if _ABOUT_ME.search(prompt):
        facts = conversation.facts()
        if not facts:
            return "I don't know anything about you yet - you haven't told me anything about yourself."
        return "You told me that " + " and ".join(fact.statement() for fact in facts.values()) + "."
    if _RECALL_NAME.search(prompt):
        key = "name"
    elif _RECALL_HOME.search(prompt) and not (_WEATHER.search(prompt) or _TIME.search(prompt)):
        key = "home"
    elif match := _RECALL_FAVORITE.search(prompt):
        key = "favorite " + " ".join(match["thing"].lower().split())
    else:
        return None
    fact = conversation.facts().get(key)
    if fact is None:
        return _unknown_fact(key)
    statement = fact.statement()
    return statement[0].upper() + statement[1:] + "."


def _introduce(conversation: _Conversation) -> str:
    name = conversation.facts().get("name")
    hello = f"Hello, {name.value}!" if name else "Hello!"
    identity = conversation.identity() or "an offline assistant"
    return (
        f"{hello} I'm {identity}. I run on a small offline model, so I only know what you tell me in this conversation."
    )


def _summarize(conversation: _Conversation) -> str:
    parts = [part for turn in conversation.earlier if (part := _describe(turn, conversation))]
    if not parts:
        return "We haven't talked about anything yet - this is the start of our conversation."
    return f"So far ({_plural(len(conversation.earlier), 'earlier message')}): " + "; ".join(parts) + "."


def _describe(turn: Turn, conversation: _Conversation) -> str | None:
    """One clause of a summary, e.g. 'you told me your name is Alice'."""
    if turn.role == "user":
        if facts := _facts_in(turn.text):
            return "you told me " + " and ".join(fact.statement() for fact in facts)
        verb = "asked" if turn.text.rstrip().endswith("?") else "said"
        return f'you {verb} "{_quote(turn.text)}"'
    if turn.role == "tool":
        call = conversation.calls.get(turn.tool_call_id or "")
        return f'the {call.name if call else "unknown"} tool returned "{_quote(turn.text)}"'
    if turn.text:
        speaker = "I replied" if conversation.is_me(turn.author) else f"{turn.author} said"
        return f'{speaker} "{_quote(turn.text)}"'
    return None  # an assistant message that only calls tools: its result is described instead


# endregion

# region Tools


@dataclass(frozen=True)
class _ToolIntent:
    """A question some tool could answer: what to call it, which tools fit, and the argument values."""

    purpose: str  # completes "I don't have a tool to ..."
    fits: Callable[[str], bool]  # tested against a lower-cased tool name
    values: dict[str, Any]  # slot ("location", "expression", "amount", "source", "target", "query") -> value
    missing: str | None = None  # the question to ask when the main value is absent


def _place(prompt: str) -> str | None:
    match = _PLACE.search(prompt)
    return match["place"].strip() if match else None


def _place_or_home(prompt: str, home: _Fact | None) -> str | None:
    if home is not None and _RECALL_HOME.search(prompt):
        return home.value
    return _place(prompt)


def _expression(prompt: str) -> str | None:
    candidates = [m.group().strip() for m in _EXPRESSION.finditer(prompt)]
    expressions = [c for c in candidates if any(op in c for op in f"+-*/{_TIMES}{_DIVIDED_BY}^%")]
    if not expressions:
        return None
    expression = max(expressions, key=len)
    if not _CALCULATION_WORDS.search(prompt) and len(expression) < len(prompt.strip(" ?.!=")) - 1:
        return None  # numbers in a sentence that does not ask for a calculation
    return expression.replace(_TIMES, "*").replace(_DIVIDED_BY, "/")


def _tool_intent(prompt: str, tools: Sequence[ToolSpec], home: _Fact | None) -> _ToolIntent | None:
    """The tool question in `prompt`, if any ("where I live" means the home the user mentioned)."""
    if match := _CURRENCY.search(prompt):
        values = {
            "amount": _number(match["amount"].replace(",", "")),
            "source": match["source"].upper(),
            "target": match["target"].upper(),
        }
        return _ToolIntent("convert currencies", lambda name: "currency" in name or "exchange" in name, values)
    if _WEATHER.search(prompt):
        place = _place_or_home(prompt, home)
        return _ToolIntent(
            f"check the weather{f' in {place}' if place else ''}",
            lambda name: "weather" in name or "forecast" in name,
            {"location": place} if place else {},
            missing="Which city would you like the weather for?",
        )
    if _TIME.search(prompt):
        place = _place_or_home(prompt, home)
        return _ToolIntent(
            f"look up the time{f' in {place}' if place else ''}",
            lambda name: "time" in name or "clock" in name,
            {"location": place} if place else {},
            missing="Which city or time zone do you mean?",
        )
    if expression := _expression(prompt):
        return _ToolIntent(
            f"do calculations like {expression}",
            lambda name: any(word in name for word in ("calc", "math", "arith", "evaluate", "compute")),
            {"expression": expression},
        )
    return _generic_intent(prompt, tools)


def _generic_intent(prompt: str, tools: Sequence[ToolSpec]) -> _ToolIntent | None:
    """Any offered tool whose name words (e.g. "stock", "price" in get_stock_price) all appear in the prompt."""
    prompt_words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    for tool in tools:
        words = set(re.findall(r"[a-z0-9]+", tool.name.lower().replace("_", " "))) - _GENERIC_NAME_WORDS
        if words and all(word in prompt_words or word + "s" in prompt_words for word in words):
            value = _place(prompt) or prompt.strip()
            return _ToolIntent(f"use {tool.name}", _named(tool.name), {"query": value})
    return None


def _named(tool_name: str) -> Callable[[str], bool]:
    wanted = tool_name.lower()
    return lambda name: name == wanted


def _use_tool(intent: _ToolIntent, tools: Sequence[ToolSpec]) -> Reply:
    tool = next((tool for tool in tools if intent.fits(tool.name.lower())), None)
    if tool is None:
        return Reply(f"I don't have a tool to {intent.purpose}, so I can't answer that.")
    if not intent.values and intent.missing:
        return Reply(intent.missing)
    arguments = _fill_arguments(tool.parameters, intent.values)
    call = ToolCall(call_id=f"call_{uuid.uuid4().hex[:24]}", name=tool.name, arguments=json.dumps(arguments))
    return Reply(tool_call=call)


def _slot(parameter: str) -> str | None:
    """Which value slot a schema property name asks for, e.g. "from_currency" -> "source"."""
    words = set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", parameter).lower()))
    if words & {"from", "source", "base"}:
        return "source"
    if words & {"to", "target", "quote"}:
        return "target"
    if words & {"amount", "value", "quantity", "sum"}:
        return "amount"
    if words & {"expression", "expr", "formula", "equation", "calculation"}:
        return "expression"
    if words & {"location", "city", "place", "timezone", "tz", "zone", "region", "country", "where", "area"}:
        return "location"
    return None


def _fill_arguments(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Arguments for a tool, matching the schema's property names to the values the prompt provided."""
    properties: dict[str, Any] = schema.get("properties") or {}
    arguments = {}
    for name, spec in properties.items():
        slot = _slot(name)
        if slot in values:
            arguments[name] = _coerce(values[slot], spec)
    main_value = next(iter(values.values()), None)
    for name in schema.get("required") or []:
        if name in arguments or name not in properties:
            continue
        spec = properties[name]
        if "default" in spec:
            arguments[name] = spec["default"]
        elif spec.get("enum"):
            arguments[name] = spec["enum"][0]
        elif main_value is not None:
            arguments[name] = _coerce(main_value, spec)
    if not arguments and main_value is not None:
        first_string = next((name for name, spec in properties.items() if spec.get("type") == "string"), None)
        if first_string is not None:
            arguments[first_string] = str(main_value)
    return arguments


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _coerce(value: Any, spec: dict[str, Any]) -> Any:
    kind = spec.get("type")
    if kind in ("number", "integer"):
        try:
            return _number(str(value))
        except ValueError:
            return value
    if kind == "string":
        text = str(value)
        return next((option for option in spec.get("enum") or [] if str(option).lower() == text.lower()), text)
    return value


def _answer_from_tool_results(results: list[tuple[ToolCall | None, str]], prompt: str) -> str:
    return " ".join(_answer_from_tool_result(call, result, prompt) for call, result in results)


def _answer_from_tool_result(call: ToolCall | None, result: str, prompt: str) -> str:
    result = _tool_result_text(result)
    ending = "" if result.rstrip().endswith((".", "!", "?")) else "."
    return f"{_lead_in(call, prompt)}{result}{ending}"


def _tool_result_text(result: str) -> str:
    """The tool's text; clients may JSON-encode a string result."""
    try:
        decoded = json.loads(result)
    except ValueError:
        return result
    return decoded if isinstance(decoded, str) else result


def _lead_in(call: ToolCall | None, prompt: str) -> str:
    """What introduces a tool result in the answer, e.g. "The weather in Seattle: "."""
    if call is None:
        return "The tool says: "
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    slots = {_slot(name): value for name, value in arguments.items()}
    first_text = next((value for value in arguments.values() if isinstance(value, str)), None)
    place = slots.get("location") or first_text or _place(prompt)
    where = f" in {place}" if place else ""
    name = call.name.lower()
    if "weather" in name or "forecast" in name:
        return f"The weather{where}: "
    if "time" in name:
        return f"The time{where}: "
    if {"amount", "source", "target"} <= slots.keys():
        return f"{slots['amount']} {slots['source']} in {slots['target']}: "
    if "expression" in slots:
        return f"{slots['expression']} = "
    return f"The {call.name} tool says: "


# endregion

# region Wire formats


class RequestRejected(Exception):
    """A request the real service would answer with HTTP 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _text_of(content: Any) -> str:
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


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRejected("you must provide a model parameter", "model")
    return model


def _word_count(text: str) -> int:
    return len(text.split())


def _stream_pieces(text: str) -> list[str]:
    """Word-sized pieces of `text` for streaming (their concatenation is `text`)."""
    return re.findall(r"\s*\S+\s*", text) or [text]


def _tools_from(body: dict[str, Any], *, nested: bool) -> list[ToolSpec]:
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


def _check_tool_pairs(turns: Sequence[Turn], *, responses_api: bool) -> None:
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


def _chat_turns(messages: Any) -> list[Turn]:
    if not isinstance(messages, list) or not messages:
        raise RequestRejected("'messages' must be a non-empty array.", "messages")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        ):
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
            Turn(role, _text_of(message.get("content")), calls, message.get("tool_call_id"), message.get("name"))
        )
    _check_tool_pairs(turns, responses_api=False)
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
        for piece in _stream_pieces(reply.text):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
    if usage is not None:
        yield {**base, "choices": [], "usage": usage}


@dataclass
class _StoredResponse:
    previous_response_id: str | None
    turns: list[Turn]  # this response's input items followed by its output items


@dataclass
class _ResponseStore:
    """Stored responses (`store: true`), each linked to the one before it."""

    responses: dict[str, _StoredResponse] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chain(self, response_id: str) -> list[Turn]:
        """Every turn of the conversation that ends with `response_id`, oldest first."""
        with self.lock:
            if response_id not in self.responses:
                raise RequestRejected(
                    f"Previous response with id '{response_id}' not found.",
                    "previous_response_id",
                    "previous_response_not_found",
                )
            pieces = []
            current: str | None = response_id
            while current is not None:
                stored = self.responses[current]
                pieces.append(stored.turns)
                current = stored.previous_response_id
        return [turn for piece in reversed(pieces) for turn in piece]

    def save(self, response_id: str, stored: _StoredResponse) -> None:
        with self.lock:
            self.responses[response_id] = stored


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
            turns.append(Turn(role, _text_of(item.get("content")), item_id=item.get("id")))
        elif kind == "function_call":
            call = ToolCall(item.get("call_id", ""), item.get("name", ""), item.get("arguments", ""))
            turns.append(Turn("assistant", tool_calls=(call,), item_id=item.get("id")))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output)
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
            what = f"item '{turn.item_id}'" if replayed_id else f"{turn.role} item {_quote(_describe_item(turn))!r}"
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
        for piece in _stream_pieces(text):
            events.add("response.output_text.delta", **common, content_index=0, delta=piece, logprobs=[])
        events.add("response.output_text.done", **common, content_index=0, text=text, logprobs=[])
        events.add("response.content_part.done", **common, content_index=0, part={**part, "text": text})
    events.add("response.output_item.done", output_index=0, item=item)
    events.add("response.completed", response=response)
    return events.events


# endregion

# region HTTP server


@dataclass
class _Answer:
    """What to send back: a JSON body, or a list of SSE payloads."""

    status: int = 200
    body: dict[str, Any] | None = None
    events: list[tuple[str | None, str]] | None = None  # (event name, data)


class OfflineModelServer:
    """The offline model on a loopback HTTP port, speaking the OpenAI Chat Completions and Responses APIs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._store = _ResponseStore()
        self._tool_calls: list[tuple[str, dict[str, Any]]] = []
        self.rejections: list[str] = []
        self.requests_served = 0

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The offline model server is not running; call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL, e.g. "http://127.0.0.1:PORT/v1"."""
        with self._lock:
            if self._httpd is None:
                httpd = _QuietHTTPServer((self._host, self._port), _handler_for(self))
                self._thread = threading.Thread(
                    target=httpd.serve_forever, args=(0.05,), name="offline-model", daemon=True
                )
                self._httpd = httpd
                self._thread.start()
        return self.base_url

    def stop(self) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def tool_calls_emitted(self) -> list[tuple[str, dict[str, Any]]]:
        """(tool name, arguments) of every tool call the model emitted, in order."""
        with self._lock:
            return list(self._tool_calls)

    def _answer(self, method: str, path: str, raw_body: bytes) -> _Answer:
        """Handle one request (called by the HTTP handler threads)."""
        route = path.split("?", 1)[0].rstrip("/")
        if method != "POST" or route not in ("/v1/chat/completions", "/v1/responses"):
            message = (
                f"Unknown request URL: {method} {path}. The offline model serves POST /v1/chat/completions "
                "and POST /v1/responses."
            )
            return _Answer(404, _error_body(message, "invalid_request_error", code="unknown_url"))
        try:
            try:
                body = json.loads(raw_body or b"null")
            except ValueError as error:
                raise RequestRejected(f"We could not parse the JSON body of your request ({error}).") from error
            if not isinstance(body, dict):
                raise RequestRejected("The request body must be a JSON object.")
            if route == "/v1/chat/completions":
                return self._chat_completions(body)
            return self._responses(body)
        except RequestRejected as rejection:
            with self._lock:
                self.rejections.append(rejection.message)
            return _Answer(
                400, _error_body(rejection.message, "invalid_request_error", rejection.param, rejection.code)
            )

    def _reply(self, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> Reply:
        reply = compose_reply(turns, tools)
        if reply.tool_call:
            with self._lock:
                self._tool_calls.append((reply.tool_call.name, json.loads(reply.tool_call.arguments)))
        return reply

    def _chat_completions(self, body: dict[str, Any]) -> _Answer:
        model = _require_model(body)
        turns = _chat_turns(body.get("messages"))
        reply = self._reply(turns, _tools_from(body, nested=True))
        reply_words = _word_count(reply.text or (reply.tool_call.arguments if reply.tool_call else ""))
        usage = _usage(sum(_word_count(turn.text) for turn in turns), reply_words)
        if not body.get("stream"):
            return _Answer(body=_chat_completion(model, reply, usage))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _chat_chunks(model, reply, usage if include_usage else None)
        return _Answer(events=[*((None, json.dumps(chunk)) for chunk in chunks), (None, "[DONE]")])

    def _responses(self, body: dict[str, Any]) -> _Answer:
        model = _require_model(body)
        if body.get("conversation"):
            raise RequestRejected(
                "The offline model does not support 'conversation'; use previous_response_id.", "conversation"
            )
        previous_id = body.get("previous_response_id")
        chain = self._store.chain(previous_id) if previous_id else []
        new_turns = _input_turns(body.get("input"))
        if previous_id:
            _check_no_replay(new_turns, chain, previous_id)
        turns = [*chain, *new_turns]
        _check_tool_pairs(turns, responses_api=True)
        instructions = body.get("instructions")
        visible = [Turn("system", instructions), *turns] if isinstance(instructions, str) and instructions else turns
        reply = self._reply(visible, _tools_from(body, nested=False))
        item = _output_item(reply)
        response_id = f"resp_{uuid.uuid4().hex}"
        if body.get("store", True) is not False:
            output_turn = Turn(
                "assistant", reply.text, (reply.tool_call,) if reply.tool_call else (), item_id=item["id"]
            )
            self._store.save(response_id, _StoredResponse(previous_id, [*new_turns, output_turn]))
        input_words = sum(_word_count(turn.text) for turn in visible)
        output_words = _word_count(reply.text or (reply.tool_call.arguments if reply.tool_call else ""))
        usage = {
            "input_tokens": input_words,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_words,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_words + output_words,
        }
        response = _response_object(response_id, model, body, [item], usage)
        if not body.get("stream"):
            return _Answer(body=response)
        return _Answer(events=[(event["type"], json.dumps(event)) for event in _response_events(response, item)])

    def _count_request(self) -> None:
        with self._lock:
            self.requests_served += 1


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not delay stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-stream is normal; anything else is a bug worth printing."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(server: OfflineModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes; don't wait for ACKs

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: no request log on stderr."""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            try:
                answer = server._answer(method, self.path, raw_body)
            except Exception:  # a bug in the model: fail loudly, as a 500 the SDK reports
                traceback.print_exc()
                message = "The offline model failed: " + traceback.format_exc(limit=1).strip().splitlines()[-1]
                answer = _Answer(500, _error_body(message, "server_error"))
            server._count_request()  # before sending, so a client that has the answer sees the count
            if answer.events is None:
                self._send_json(answer.status, answer.body or {})
            else:
                self._send_events(answer.events)

        def _send_json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_events(self, events: list[tuple[str | None, str]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the stream ends when the connection does
            self.end_headers()
            self.close_connection = True
            for name, data in events:
                prefix = f"event: {name}\n" if name else ""
                self.wfile.write(f"{prefix}data: {data}\n\n".encode())
                self.wfile.flush()

    return Handler


_singleton: OfflineModelServer | None = None
_singleton_lock = threading.Lock()


def offline_model_server() -> OfflineModelServer:
    """The process-wide offline model server, started on a free loopback port on first use."""
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            server = OfflineModelServer()
            server.start()
            _singleton = server
        return _singleton


# endregion
