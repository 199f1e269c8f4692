"""The reply logic: a deterministic answer computed only from the visible turns and the offered tools.

The model greets and introduces itself (with the name its instructions give it), acknowledges and recalls facts
about the user (see `facts`), tells jokes, describes the conversation when asked, answers a summarizer request
(agent_framework's `SummarizationStrategy`) with exactly the facts in the transcript it was given, and calls tools
(see `tools`). Everything else gets a reply that quotes what it understood.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .conversation import Reply, ToolCall, ToolSpec, Turn, quote
from .facts import Fact, is_transcript, known_facts, stated_facts, transcript_messages, unknown_fact, write_summary
from .tools import TIME, WEATHER, answer_from_tool_results, tool_intent, use_tool

_RECALL_NAME = re.compile(r"\b(?:what(?:'s| is) my name|what my name is|(?:remember|know) my name|who am i)\b", re.I)
_RECALL_HOME = re.compile(r"\b(?:where do i live|where i live)\b", re.I)
_RECALL_FAVORITE = re.compile(
    r"\b(?:what(?:'s| is)|what are|(?:remember|know)) my favou?rite\s+(?P<thing>[a-z][a-z ]*?)\s*(?:is\b|\?|$|\.)",
    re.I,
)
_ABOUT_ME = re.compile(r"\bwhat (?:do|else do) you know about me\b", re.I)
_SUMMARY = re.compile(r"\bsummar(?:y|ise|ize)\b|\bwhat have we (?:talked|discussed|spoken)\b|\brecap\b", re.I)
# A summarizer's instructions: agent_framework's default prompt starts "**Generate a clear and complete summary".
_SUMMARIZER = re.compile(r"\bsummar(?:y|ies|ise|ize|ising|izing)\b", re.I)
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

_JOKES = (
    "Why did the developer go broke? Because he used up all his cache.",
    "There are 10 kinds of people: those who understand binary and those who don't.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
    "A SQL query walks into a bar, goes up to two tables and asks: 'Can I join you?'",
)


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
        self._facts: dict[str, Fact] | None = None

    def facts(self) -> dict[str, Fact]:
        """Facts from earlier messages (user statements, earlier summaries); a later statement wins."""
        if self._facts is None:
            self._facts = known_facts((turn.role, turn.text) for turn in self.earlier)
        return self._facts

    def is_summarizer_request(self) -> bool:
        """Instructions that ask for a summary, and a transcript to summarise as the only message."""
        return (
            not self.earlier
            and not self.after_prompt
            and is_transcript(self.prompt)
            and _SUMMARIZER.search(self.system_text) is not None
        )

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
    if conversation.is_summarizer_request():
        return Reply(write_summary(known_facts(transcript_messages(conversation.prompt)).values()))
    results = conversation.tool_results_since_prompt()
    reply = (
        Reply(answer_from_tool_results(results, conversation.prompt))
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
    if is_transcript(prompt):  # a transcript without a request to summarise it: not the user speaking
        return _fallback(conversation)
    if _SUMMARY.search(prompt):
        return Reply(_describe_conversation(conversation))
    if recalled := _recall(conversation, prompt):
        return Reply(recalled)
    if facts := stated_facts(prompt):
        greeting = "Hello! " if _GREETING.search(prompt) else ""
        return Reply(greeting + " ".join(fact.acknowledgement() for fact in facts))
    home = conversation.facts().get("home") if _RECALL_HOME.search(prompt) else None
    if intent := tool_intent(prompt, tools, home):
        return use_tool(intent, tools)
    if _JOKE.search(prompt):
        return Reply(_JOKES[len(conversation.earlier) % len(_JOKES)])
    if _GREETING.search(prompt) or _INTRODUCTION.search(prompt):
        return Reply(_introduce(conversation))
    return _fallback(conversation)


def _fallback(conversation: _Conversation) -> Reply:
    return Reply(
        f"You said: \"{quote(conversation.prompt, 100)}\". I'm a simple offline model, so I can't answer that "
        f"properly; I can see {_plural(len(conversation.earlier), 'earlier message')} in this conversation."
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
    elif _RECALL_HOME.search(prompt) and not (WEATHER.search(prompt) or TIME.search(prompt)):
        key = "home"
    elif match := _RECALL_FAVORITE.search(prompt):
        key = "favorite " + " ".join(match["thing"].lower().split())
    else:
        return None
    fact = conversation.facts().get(key)
    if fact is None:
        return unknown_fact(key)
    statement = fact.statement()
    return statement[0].upper() + statement[1:] + "."


def _introduce(conversation: _Conversation) -> str:
    name = conversation.facts().get("name")
    hello = f"Hello, {name.value}!" if name else "Hello!"
    identity = conversation.identity() or "an offline assistant"
    return (
        f"{hello} I'm {identity}. I run on a small offline model, so I only know what you tell me in this conversation."
    )


def _describe_conversation(conversation: _Conversation) -> str:
    """The answer to "summarize our conversation": one clause per earlier message."""
    parts = [part for turn in conversation.earlier if (part := _describe(turn, conversation))]
    if not parts:
        return "We haven't talked about anything yet - this is the start of our conversation."
    return f"So far ({_plural(len(conversation.earlier), 'earlier message')}): " + "; ".join(parts) + "."


def _describe(turn: Turn, conversation: _Conversation) -> str | None:
    """One clause of a description, e.g. 'you told me your name is Alice'."""
    if turn.role == "user":
        if facts := stated_facts(turn.text):
            return "you told me " + " and ".join(fact.statement() for fact in facts)
        verb = "asked" if turn.text.rstrip().endswith("?") else "said"
        return f'you {verb} "{quote(turn.text)}"'
    if turn.role == "tool":
        call = conversation.calls.get(turn.tool_call_id or "")
        return f'the {call.name if call else "unknown"} tool returned "{quote(turn.text)}"'
    if turn.text:
        speaker = "I replied" if conversation.is_me(turn.author) else f"{turn.author} said"
        return f'{speaker} "{quote(turn.text)}"'
    return None  # an assistant message that only calls tools: its result is described instead
