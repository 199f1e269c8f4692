"""Facts about the user: what a user message states, and the summary that carries them when history is compacted.

A fact is stated by a user message ("my name is Alice", "I live in Paris", "my favorite color is green") or
carried by a summary this model wrote earlier (an assistant message starting with `SUMMARY_PREFIX`). Nothing
else counts: an assistant saying "My name is Zed" states nothing about the user, and a summarizer transcript
pasted into a user message (lines like "1. [user] My name is Alice.") is a report of a conversation, not the user
speaking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SUMMARY_PREFIX = "Summary of the earlier conversation:"

_VALUE = r"(?P<value>[^.,!?;\n]+?)(?=\s+(?:and|but)\b|[.,!?;\n]|$)"
_STATEMENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"\bmy name is\s+{_VALUE}", re.I), "name"),
    (re.compile(rf"\bcall me\s+{_VALUE}", re.I), "name"),
    (re.compile(rf"\bi live in\s+{_VALUE}", re.I), "home"),
    (re.compile(rf"\bmy favou?rite\s+(?P<thing>[a-z][a-z ]*?)\s+is\s+{_VALUE}", re.I), "favorite"),
)
_SUMMARY_CLAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"the user's name is (?P<value>.+)"), "name"),
    (re.compile(r"the user lives in (?P<value>.+)"), "home"),
    (re.compile(r"the user's (?P<thing>favorite [a-z][a-z ]*?) is (?P<value>.+)"), "favorite"),
)
_NO_FACTS = "the user has not stated any facts about themselves"
# agent_framework's summarizer transcript: one "N. [role] text" line per message (`_format_messages_for_summary`).
_TRANSCRIPT_ENTRY = re.compile(r"^[ \t]*\d+\. \[(?P<role>system|user|assistant|tool)\] ?", re.M)


@dataclass(frozen=True)
class Fact:
    """Something the user said about themselves, e.g. key "favorite color", value "blue"."""

    key: str
    value: str

    def statement(self) -> str:
        """Addressed to the user: "your name is Alice"."""
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

    def summary_clause(self) -> str:
        """In a summary (read back by `summary_facts`): "the user's name is Alice"."""
        if self.key == "home":
            return f"the user lives in {self.value}"
        return f"the user's {self.key} is {self.value}"


def unknown_fact(key: str) -> str:
    if key == "name":
        return "I don't know your name yet - you haven't told me in this conversation."
    if key == "home":
        return "I don't know where you live - you haven't told me in this conversation."
    return f"I don't know your {key} - you haven't told me in this conversation."


def stated_facts(text: str) -> list[Fact]:
    """The facts a user message states; a summarizer transcript inside it states none."""
    if "] " in text and (transcript := _TRANSCRIPT_ENTRY.search(text)):
        text = text[: transcript.start()]
    facts = []
    for pattern, key in _STATEMENTS:
        for match in pattern.finditer(text):
            kind = "favorite " + " ".join(match["thing"].lower().split()) if key == "favorite" else key
            facts.append(Fact(kind, match["value"].strip()))
    return facts


def summary_facts(text: str) -> list[Fact]:
    """The facts carried by a summary this model wrote (see `write_summary`); none for any other text."""
    if not text.startswith(SUMMARY_PREFIX):
        return []
    facts = []
    for clause in text[len(SUMMARY_PREFIX) :].strip().rstrip(".").split("; "):
        for pattern, key in _SUMMARY_CLAUSES:
            if match := pattern.fullmatch(clause):
                facts.append(Fact(match["thing"] if key == "favorite" else key, match["value"]))
                break
    return facts


def facts_from(role: str, text: str) -> list[Fact]:
    """What one message tells about the user: a user's statements, or the facts an earlier summary carries."""
    if role == "user":
        return stated_facts(text)
    if role == "assistant":
        return summary_facts(text)
    return []


def known_facts(messages: Iterable[tuple[str, str]]) -> dict[str, Fact]:
    """Facts from (role, text) messages, oldest first; a later statement of the same kind wins."""
    known: dict[str, Fact] = {}
    for role, text in messages:
        known.update((fact.key, fact) for fact in facts_from(role, text))
    return known


def is_transcript(text: str) -> bool:
    """Whether `text` is a summarizer transcript: it starts with a "1. [user] ..." line."""
    return _TRANSCRIPT_ENTRY.match(text) is not None


def transcript_messages(text: str) -> list[tuple[str, str]]:
    """(role, text) of each "N. [role] text" entry; an entry runs until the next one (texts may span lines)."""
    starts = list(_TRANSCRIPT_ENTRY.finditer(text))
    ends = [match.start() for match in starts[1:]] + [len(text)]
    return [(match["role"], text[match.end() : end].strip()) for match, end in zip(starts, ends, strict=True)]


def write_summary(facts: Iterable[Fact]) -> str:
    """A summary that states exactly `facts`: its length grows with distinct facts, not with the conversation."""
    clauses = [fact.summary_clause() for fact in facts]
    return f"{SUMMARY_PREFIX} {'; '.join(clauses) or _NO_FACTS}."
