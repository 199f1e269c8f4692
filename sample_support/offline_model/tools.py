"""Tool calls: which offered tool a question needs, its arguments from the schema, and answers from its results.

The model calls a tool only when the request offers one that fits: weather, time, calculator and currency tools by
their usual names, or any tool whose name words all appear in the question ("Book a flight to Paris." calls
`book_flight`). Arguments are matched to the schema's property names ("city", "destination", "from_currency").
After the call, the answer quotes the result (or is the result, when the tool already answered in a sentence);
a call the user declined ("Error: Tool call invocation was rejected by user.") is answered with what was not done.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .conversation import Reply, ToolCall, ToolSpec
from .facts import Fact

WEATHER = re.compile(r"\bweather\b|\bforecast\b|\btemperature\b", re.I)
TIME = re.compile(r"\bwhat time\b|\btime is it\b|\b(?:current|local) time\b|\bthe time\b", re.I)
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
_NAMED_PLACE = r"(?P<place>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"
_DESTINATION = re.compile(rf"\b[Tt]o\s+{_NAMED_PLACE}")  # "a flight to New York"
_ORIGIN = re.compile(rf"\b[Ff]rom\s+{_NAMED_PLACE}")
_GENERIC_NAME_WORDS = {"get", "fetch", "lookup", "look", "find", "check", "current", "search", "query", "tool"}
# agent_framework answers a declined approval with the tool result "Error: Tool call invocation was rejected by user."
_DECLINED = re.compile(r"\b(?:rejected|declined|denied) by (?:the )?user\b", re.I)
# A result that already answers in a sentence: "The weather in Paris is sunny." (not "Error: ..." or "sunny, 18 C").
_SENTENCE = re.compile(r"[A-Z][\w']*(?:\s+\S+)+[.!?]")


@dataclass(frozen=True)
class ToolIntent:
    """A question some tool could answer: what to call it, which tools fit, and the argument values."""

    purpose: str  # completes "I don't have a tool to ..."
    fits: Callable[[str], bool]  # tested against a lower-cased tool name
    values: dict[str, Any]  # slot ("location", "expression", "amount", "source", "target", "query") -> value
    missing: str | None = None  # the question to ask when the main value is absent


def _place(prompt: str) -> str | None:
    match = _PLACE.search(prompt)
    return match["place"].strip() if match else None


def tool_intent(prompt: str, tools: Sequence[ToolSpec], home: Fact | None = None) -> ToolIntent | None:
    """The tool question in `prompt`, if any; `home` is the place to use when the prompt means where the user lives."""
    if match := _CURRENCY.search(prompt):
        values = {
            "amount": _number(match["amount"].replace(",", "")),
            "source": match["source"].upper(),
            "target": match["target"].upper(),
        }
        return ToolIntent("convert currencies", lambda name: "currency" in name or "exchange" in name, values)
    if WEATHER.search(prompt):
        place = home.value if home else _place(prompt)
        return ToolIntent(
            f"check the weather{f' in {place}' if place else ''}",
            lambda name: "weather" in name or "forecast" in name,
            {"location": place} if place else {},
            missing="Which city would you like the weather for?",
        )
    if TIME.search(prompt):
        place = home.value if home else _place(prompt)
        return ToolIntent(
            f"look up the time{f' in {place}' if place else ''}",
            lambda name: "time" in name or "clock" in name,
            {"location": place} if place else {},
            missing="Which city or time zone do you mean?",
        )
    if expression := _expression(prompt):
        return ToolIntent(
            f"do calculations like {expression}",
            lambda name: any(word in name for word in ("calc", "math", "arith", "evaluate", "compute")),
            {"expression": expression},
        )
    return _generic_intent(prompt, tools)


def _expression(prompt: str) -> str | None:
    candidates = [m.group().strip() for m in _EXPRESSION.finditer(prompt)]
    expressions = [c for c in candidates if any(op in c for op in f"+-*/{_TIMES}{_DIVIDED_BY}^%")]
    if not expressions:
        return None
    expression = max(expressions, key=len)
    if not _CALCULATION_WORDS.search(prompt) and len(expression) < len(prompt.strip(" ?.!=")) - 1:
        return None  # numbers in a sentence that does not ask for a calculation
    return expression.replace(_TIMES, "*").replace(_DIVIDED_BY, "/")


def _generic_intent(prompt: str, tools: Sequence[ToolSpec]) -> ToolIntent | None:
    """Any offered tool whose name words (e.g. "book", "flight" in book_flight) all appear in the prompt."""
    prompt_words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    for tool in tools:
        words = set(_name_words(tool.name)) - _GENERIC_NAME_WORDS
        if words and all(word in prompt_words or word + "s" in prompt_words for word in words):
            destination, origin = _DESTINATION.search(prompt), _ORIGIN.search(prompt)
            values: dict[str, Any] = {}
            if place := destination["place"] if destination else _place(prompt):
                values["location"] = place
            if destination:
                values["target"] = destination["place"]
            if origin:
                values["source"] = origin["place"]
            return ToolIntent(f"use {tool.name}", _named(tool.name), values or {"query": prompt.strip()})
    return None


def _name_words(tool_name: str) -> list[str]:
    """ "book_flight" -> ["book", "flight"]; "getStockPrice" -> ["get", "stock", "price"]."""
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", tool_name).lower())


def _named(tool_name: str) -> Callable[[str], bool]:
    wanted = tool_name.lower()
    return lambda name: name == wanted


def use_tool(intent: ToolIntent, tools: Sequence[ToolSpec]) -> Reply:
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
    if words & {"from", "source", "base", "origin", "departure"}:
        return "source"
    if words & {"to", "target", "quote", "destination", "dest", "recipient"}:
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


def answer_from_tool_results(results: list[tuple[ToolCall | None, str]], prompt: str) -> str:
    return " ".join(_answer_from_tool_result(call, result, prompt) for call, result in results)


def _answer_from_tool_result(call: ToolCall | None, result: str, prompt: str) -> str:
    result = _tool_result_text(result).strip()
    if _DECLINED.search(result):
        return f"I did not {_action(call)}: the request was declined."
    ending = "" if result.endswith((".", "!", "?")) else "."
    lead_in = _lead_in(call, prompt)
    if _SENTENCE.fullmatch(result) or result.lower().startswith(lead_in.rstrip(" :=").lower()):
        return result + ending  # the result already says it; a lead-in would repeat it
    return f"{lead_in}{result}{ending}"


def _tool_result_text(result: str) -> str:
    """The tool's text; clients may JSON-encode a string result."""
    try:
        decoded = json.loads(result)
    except ValueError:
        return result
    return decoded if isinstance(decoded, str) else result


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return arguments if isinstance(arguments, dict) else {}


def _action(call: ToolCall | None) -> str:
    """What the call would have done: book_flight(destination="Paris") -> "book the flight to Paris"."""
    if call is None:
        return "run the tool"
    verb, *rest = _name_words(call.name) or ["run"]
    action = f"{verb} the {' '.join(rest)}" if rest else f"run {call.name}"
    slots = {_slot(name): value for name, value in _arguments(call).items()}
    if slots.get("target") is not None:
        return f"{action} to {slots['target']}"
    if slots.get("location") is not None:
        return f"{action} in {slots['location']}"
    return action


def _lead_in(call: ToolCall | None, prompt: str) -> str:
    """What introduces a tool result in the answer, e.g. "The weather in Seattle: "."""
    if call is None:
        return "The tool says: "
    arguments = _arguments(call)
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
