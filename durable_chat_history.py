"""What both Durable Task chat message stores share: the history orchestration's state, its steps, their errors.

`ChatHistory` wraps the state a chat history orchestration carries across continue-as-new (a JSON dict) and the steps
its orchestrator applies to each append event: recognise a retried write, keep each message once, refuse a record
this version cannot read, append, and drop whole oldest exchanges past a byte budget. It runs inside orchestrators,
so it is deterministic: no I/O, no clock. durable_task_chat_message_store.py shows the store and its orchestrator;
durable_task_activity_chat_message_store.py adds a metadata row per message. Copy this module beside them.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from agent_framework import Message
from durabletask import task

SCHEMA_VERSION = 1  # of the orchestration's state: a store refuses a state it does not know


class ChatHistoryError(RuntimeError):
    """A Durable Task chat history cannot be used as asked; the message names the session."""


class InvalidArgument(ChatHistoryError, ValueError):
    """A session id or a setting the store cannot use."""


class HistoryTooLarge(ChatHistoryError, ValueError):
    """A write over the history's byte budget; nothing of it was stored."""


class HistoryTimeout(ChatHistoryError, TimeoutError):
    """This store's writes did not show up in time: no worker with the orchestrator is running."""


class ChatHistory:
    """The orchestration's state (a JSON dict carried across continue-as-new) and the steps applied to it.

    Rows are parallel lists, `messages` first (the activity store adds `metadata`). `bytes` is the kept rows'
    running size: an append sizes only its new rows, a trim only the rows it drops.
    """

    APPEND_EVENT: ClassVar[str] = "append_messages"
    COUNTERS: ClassVar[tuple[str, ...]] = ("writes", "trimmed", "generation", "duplicate_writes", "duplicate_messages")
    REMEMBERED_WRITES: ClassVar[int] = 200  # a retry of one of the last 200 writes is recognised by its write id

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @classmethod
    def new(cls, every: int, budget_bytes: int) -> dict[str, Any]:
        state = {"schema": SCHEMA_VERSION, "every": every, "budget_bytes": budget_bytes, "messages": [], "bytes": 0}
        return {**state, **dict.fromkeys(cls.COUNTERS, 0), "write_ids": [], "rejected": []}

    @staticmethod
    def size(value: Any) -> int:
        return len(json.dumps(value).encode())

    @staticmethod
    def is_record(message: Any) -> bool:
        """Shaped like a record `save_messages` sends (`Message.to_dict()` with a message id); cheap, for every read."""
        kinds = {"role": str, "message_id": str, "contents": list}
        return isinstance(message, dict) and all(isinstance(message.get(key), kind) for key, kind in kinds.items())

    @staticmethod
    def to_messages(session_id: str | None, records: list[dict[str, Any]]) -> list[Message]:
        """The stored records as messages; a record this version cannot read is an error naming the session."""
        messages = []
        for number, record in enumerate(records, 1):
            try:
                messages.append(Message.from_dict(record))
            except Exception as error:  # whatever from_dict raises (TypeError: an unknown field), it cannot read it
                raise ChatHistoryError(
                    f"session {session_id!r}: stored message {number} ({record.get('message_id')!r}) is not one this "
                    f"version reads ({error}); read_status() still returns every stored record"
                ) from None
        return messages

    def publish(self, ctx: task.OrchestrationContext) -> None:
        if not ctx.is_replaying:  # a replay re-runs this code: serialise the whole history for new events only
            ctx.set_custom_status(self.state)

    def new_messages(self, write: Any) -> list[dict[str, Any]] | None:
        """The messages of `write` not held yet; None if its write id was applied already or the write is refused."""
        write_id, messages = (write.get("write_id"), write.get("messages")) if isinstance(write, dict) else (0, 0)
        if not (isinstance(write_id, str) and isinstance(messages, list) and all(map(self.is_record, messages))):
            if isinstance(write_id, str):  # a reader waiting for this write gets the reason
                self.reject(write_id, "the append event holds no message records")
            return None
        if write_id in self.state["write_ids"]:
            self.state["duplicate_writes"] += 1
            return None
        held = {message["message_id"] for message in self.state["messages"]}
        fresh = [message for message in messages if message["message_id"] not in held]
        for message in fresh:  # a record every later read could not parse is refused here, with the whole write
            try:
                Message.from_dict(message)  # deterministic: no I/O
            except Exception as error:  # any: an exception here would fail the orchestration, and the history with it
                self.reject(write_id, f"message {message['message_id']!r} is not one this version reads ({error})")
                return None
        self.state["duplicate_messages"] += len(messages) - len(fresh)
        return fresh

    def reject(self, write_id: str, reason: str, *, too_large: bool = False) -> None:
        """Record a write that was not stored, so a reader waiting for it gets the reason instead of a timeout."""
        entry = {"write_id": write_id, "reason": reason, "too_large": too_large}
        self.state["rejected"] = [*self.state["rejected"], entry][-self.REMEMBERED_WRITES :]
        self.state["write_ids"] = [*self.state["write_ids"], write_id][-self.REMEMBERED_WRITES :]

    def append(self, write_id: str, columns: dict[str, list[Any]]) -> bool:
        """Append one write's rows, then drop whole oldest exchanges past the budget; False if it is refused."""
        state, budget = self.state, self.state["budget_bytes"]
        if (size := self.size(columns)) > budget:
            self.reject(
                write_id, f"the write has {size:,} bytes, over the history budget of {budget:,}", too_large=True
            )
            return False
        for name, values in columns.items():
            state[name].extend(values)
        state["bytes"] += sum(self.size(list(row)) for row in zip(*columns.values(), strict=True))
        state["writes"] += 1
        state["write_ids"] = [*state["write_ids"], write_id][-self.REMEMBERED_WRITES :]
        # Own code, not the framework's compaction: the limit is gRPC bytes, and this trims an orchestration's
        # state deterministically, not `Message` objects in an agent run. A cut lands on a user message (whole
        # exchanges), else on a message that is not a tool result, so a result never loses its call.
        messages, cut = state["messages"], 0
        while state["bytes"] > budget:
            later = range(cut + 1, len(messages))
            next_cut = next((i for i in later if messages[i]["role"] == "user"), None)
            next_cut = next_cut or next((i for i in later if messages[i]["role"] != "tool"), None)
            if next_cut is None:
                break
            state["bytes"] -= sum(self.size([state[name][i] for name in columns]) for i in range(cut, next_cut))
            cut = next_cut
        for name in columns:
            del state[name][:cut]
        state["trimmed"] += cut
        return True
