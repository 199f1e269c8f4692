"""What both Durable Task chat message stores share: the history orchestration's state, its steps, their errors.

`ChatHistory` wraps the state a chat history orchestration carries across continue-as-new (a JSON dict) and the steps
its orchestrator applies to each append event: recognise a retried write, keep each message once, refuse a record
this version cannot read, append, and past a byte budget summarise (an option) or drop whole oldest exchanges. It
runs inside orchestrators, so it is deterministic (no I/O, no clock), except `summarize`, the summary activity's body.
Copy this module beside durable_task_chat_message_store.py or durable_task_activity_chat_message_store.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from agent_framework import Message, SummarizationStrategy, SupportsChatGetResponse, annotate_message_groups
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
    running size: an append sizes only its new rows, a trim only the rows it drops. With `summarize`, the oldest
    exchanges past the budget become one summary (`summary_id`, always the first message); the originals are gone.
    """

    APPEND_EVENT: ClassVar[str] = "append_messages"
    COUNTERS: ClassVar[tuple[str, ...]] = ("writes", "trimmed", "generation", "duplicate_writes", "duplicate_messages")
    SUMMARY_COUNTERS: ClassVar[tuple[str, ...]] = ("summaries", "summarized", "summary_failures")
    REMEMBERED_WRITES: ClassVar[int] = 200  # a retry of one of the last 200 writes is recognised by its write id

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @classmethod
    def new(cls, every: int, budget_bytes: int, *, summarize: bool = False) -> dict[str, Any]:
        state = {"schema": SCHEMA_VERSION, "every": every, "budget_bytes": budget_bytes, "messages": [], "bytes": 0}
        if summarize:
            state |= {"summarize": True, "summary_id": None, "summary_error": None}
            state |= dict.fromkeys(cls.SUMMARY_COUNTERS, 0)
        return {**state, **dict.fromkeys(cls.COUNTERS, 0), "write_ids": [], "rejected": []}

    @staticmethod
    def size(value: Any) -> int:
        return len(json.dumps(value).encode())

    @staticmethod
    def is_record(message: Any) -> bool:
        """Shaped like a record `save_messages` sends (`Message.to_dict()` with a message id); cheap, for every read."""
        kinds = {"role": str, "message_id": str, "contents": list}
        return isinstance(message, dict) and all(isinstance(message.get(key), kind) for key, kind in kinds.items())

    @classmethod
    def records(cls, session_id: str | None, messages: Sequence[Message], write_id: str, budget: int) -> list[Any]:
        """One write's records; a message without an id is named after the write (a retry reuses the same ids)."""
        records = [{**m.to_dict(), "message_id": m.message_id or f"{write_id}-{i}"} for i, m in enumerate(messages)]
        if (size := cls.size(records)) > budget:
            raise HistoryTooLarge(
                f"session {session_id!r}: {len(records)} message(s) of {size:,} bytes do not fit in the history "
                f"budget of {budget:,} bytes: nothing was stored"
            )
        return records

    @classmethod
    def checked(cls, where: str, status: Any) -> Any:
        """A published status this version reads (None before the first publish); otherwise an error saying where."""
        found = status.get("schema") if isinstance(status, dict) else status
        if status is not None and found != SCHEMA_VERSION:
            raise ChatHistoryError(f"{where}: the history has schema {found!r}, this store reads {SCHEMA_VERSION}")
        lists = [status.get(key) for key in ("messages", "write_ids", "rejected")] if status else [[]] * 3
        if not all(isinstance(value, list) for value in lists) or not all(map(cls.is_record, lists[0])):
            raise ChatHistoryError(f"{where}: the stored history is corrupt (changed outside this store?)")
        return status

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
        """Add one write's rows, then drop whole oldest exchanges past the budget; False if it is refused."""
        if added := self.add(write_id, columns):
            self.trim(columns)
        return added

    def add(self, write_id: str, columns: dict[str, list[Any]]) -> bool:
        """Add one write's rows (the history may pass its budget until `trim`); False if it is refused."""
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
        return True

    def trim(self, names: Iterable[str] = ("messages",)) -> None:
        """Drop whole oldest exchanges past the budget; a summary at the head goes last."""
        state, budget, messages = self.state, self.state["budget_bytes"], self.state["messages"]
        start = int(bool(messages) and messages[0]["message_id"] == state.get("summary_id"))
        cut, dropped = self._cut(names, budget, start)
        if start and state["bytes"] - dropped > budget:  # the summary leaves no room for the newest exchange
            start, (cut, dropped) = 0, self._cut(names, budget, 0)
        for name in names:
            del state[name][start:cut]
        state["bytes"] -= dropped
        state["trimmed"] += cut - start

    def _cut(self, names: Iterable[str], limit: int, start: int, stop: int | None = None) -> tuple[int, int]:
        """Where the oldest exchanges from `start` (to `stop`) end so that the rest fits in `limit` bytes; their size.
        Own code, not the framework's compaction: the limit is gRPC bytes, and this cuts an orchestration's state
        deterministically. A cut lands on a user message (whole exchanges), else on one that is not a tool result."""
        messages, cut, dropped = self.state["messages"], start, 0
        while self.state["bytes"] - dropped > limit:
            later = range(cut + 1, len(messages) if stop is None else stop + 1)
            next_cut = next((i for i in later if messages[i]["role"] == "user"), None)
            next_cut = next_cut or next((i for i in later if messages[i]["role"] != "tool"), None)
            if next_cut is None:
                break
            dropped += sum(self.size([self.state[name][i] for name in names]) for i in range(cut, next_cut))
            cut = next_cut
        return cut, dropped

    def to_summarize(self, keep: int) -> list[dict[str, Any]]:
        """With `summarize` and the history past its budget: the oldest whole exchanges (the earlier summary first),
        never the newest `keep` messages, whose summary leaves half the budget for the rest and the next writes."""
        state, messages = self.state, self.state["messages"]
        if not state.get("summarize") or state["bytes"] <= state["budget_bytes"]:
            return []
        return messages[: self._cut(["messages"], state["budget_bytes"] // 2, 0, len(messages) - keep)[0]]

    def summarized(self, write_id: str, replaced: int, text: str) -> None:
        """Replace the oldest `replaced` messages by the summary, unless it does not fit (then `trim` drops them)."""
        state, messages = self.state, self.state["messages"]
        summary = {**Message("assistant", [text]).to_dict(), "message_id": f"summary-{write_id}"}
        size, freed = self.size([summary]), sum(self.size([message]) for message in messages[:replaced])
        if state["bytes"] - freed + size > state["budget_bytes"]:
            return self.summary_failed(f"a summary of {size:,} bytes leaves the history over its budget")
        earlier = int(messages[0]["message_id"] == state["summary_id"])
        messages[:replaced] = [summary]
        state["bytes"] += size - freed
        state["summaries"] += 1
        state["summarized"] += replaced - earlier
        state["summary_id"] = summary["message_id"]

    def summary_failed(self, reason: str) -> None:
        """Count a summary that was not written; the write is kept and `trim` drops the oldest exchanges instead."""
        self.state["summary_failures"] += 1
        self.state["summary_error"] = reason

    @staticmethod
    async def summarize(chat_client: SupportsChatGetResponse[Any], records: list[dict[str, Any]]) -> str:
        """The summary activity's body: the framework's `SummarizationStrategy` (its prompt) over the records."""
        messages = [Message.from_dict(record) for record in records]
        # The strategy always keeps the newest group: this placeholder stands for the history that stays.
        messages.append(Message("user", ["(the conversation continues)"]))
        annotate_message_groups(messages)
        strategy = SummarizationStrategy(client=chat_client, target_count=1, threshold=0, max_summary_input_tokens=None)
        if not await strategy(messages):  # the model failed or wrote nothing (the strategy logs why)
            raise ChatHistoryError(f"no summary of {len(records)} message(s) was written (the worker's log says why)")
        return messages[0].text  # the strategy puts the summary where the summarised messages began
