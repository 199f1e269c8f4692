"""The conversation as the model sees it, independent of the wire format: turns, tool calls, offered tools, replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def quote(text: str, limit: int = 60) -> str:
    """The text on one line, shortened at a word boundary."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + "..."
