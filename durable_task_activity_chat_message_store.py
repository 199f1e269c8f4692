"""The Durable Task chat message store with every write routed through an activity that enriches the records.

`DurableTaskActivityChatMessageStore` extends `DurableTaskChatMessageStore`: its orchestrator hands each write's new
messages to the `enrich_chat_records` activity, which returns them with metadata (sequence number, stored-at time,
author, content types, size, worker id), and keeps messages and metadata side by side with running statistics in
its custom status. A retried write is dropped before the activity runs; an activity delivered twice returns the
same records, and the orchestrator keeps the one result the scheduler recorded. The clock and the worker id are
read in the activity, never in the orchestrator, so replays stay deterministic.

Run it: python durable_task_activity_chat_message_store.py [--role all|worker|client] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import socket
import textwrap
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar

from agent_framework import Agent, AgentSession, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.worker import TaskHubGrpcWorker

from durable_chat_history import ChatHistory, ChatHistoryError, HistoryTimeout, InvalidArgument
from durable_task_chat_message_store import DurableTaskChatMessageStore
from sample_support import ModelBackend, SchedulerBackend, run_sample
from sample_support.durable_worker import add_role_arguments, run_store_sample, waiting_notice

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def enrich_chat_records(ctx: task.ActivityContext, write: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The write's messages with one metadata record each; the same input gives the same ids and numbers."""
    stored_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    metadata = [
        {
            "sequence": write["first_sequence"] + index,
            "message_id": message["message_id"],
            "write_id": write["write_id"],
            "role": message["role"],
            "author": message.get("author_name") or message["role"],
            "content_types": sorted({content["type"] for content in message["contents"]}),
            "size_bytes": ChatHistory.size(message),
            "stored_at": stored_at,
            "worker_id": WORKER_ID,
        }
        for index, message in enumerate(write["messages"])
    ]
    return {"messages": write["messages"], "metadata": metadata}


def activity_chat_history_orchestrator(
    ctx: task.OrchestrationContext, state: dict[str, Any]
) -> Generator[task.Task, Any, None]:
    """`chat_history_orchestrator` with each write's new messages enriched by the activity before they are kept."""
    history = EnrichedChatHistory(state)
    history.publish(ctx)
    for _ in range(state["every"]):
        write = yield ctx.wait_for_external_event(ChatHistory.APPEND_EVENT)
        fresh = history.new_messages(write)
        if fresh == []:  # only messages it holds already: nothing to enrich
            history.append(write["write_id"], {"messages": [], "metadata": []})
        elif fresh:
            first_sequence = state["next_sequence"]
            try:
                enriched = yield ctx.call_activity(
                    enrich_chat_records, input={**write, "messages": fresh, "first_sequence": first_sequence}
                )
                state["stats"]["activity_calls"] += 1
                history.append(write["write_id"], enriched)
            except task.TaskFailedError as error:
                history.reject(write["write_id"], f"the enrich activity failed: {error.details.message}")
        history.publish(ctx)
    state["generation"] += 1
    ctx.continue_as_new(state, save_events=True)


class EnrichedChatHistory(ChatHistory):
    """`ChatHistory` with a metadata row per message and running statistics, which trimming does not reduce."""

    @classmethod
    def new(cls, every: int, budget_bytes: int) -> dict[str, Any]:
        stats = {"messages": 0, "bytes": 0, "activity_calls": 0, "by_role": {}, "by_author": {}, "content_types": {}}
        return {**super().new(every, budget_bytes), "metadata": [], "next_sequence": 1, "stats": stats}

    def append(self, write_id: str, columns: dict[str, list[Any]]) -> bool:
        if not super().append(write_id, columns):
            return False
        stats = self.state["stats"]
        for record in columns["metadata"]:
            stats["messages"] += 1
            stats["bytes"] += record["size_bytes"]
            keys = [("by_role", record["role"]), ("by_author", record["author"])]
            for tally, key in keys + [("content_types", content_type) for content_type in record["content_types"]]:
                stats[tally][key] = stats[tally].get(key, 0) + 1
        self.state["next_sequence"] += len(columns["metadata"])
        return True


@dataclass
class ChatRecord:
    """One stored message and the metadata the activity recorded for it."""

    message: Message
    metadata: dict[str, Any]


class DurableTaskActivityChatMessageStore(DurableTaskChatMessageStore):
    """`DurableTaskChatMessageStore` whose writes go through the `enrich_chat_records` activity."""

    DEFAULT_SOURCE_ID: ClassVar[str] = "durable_task_activity"
    orchestrator_name: ClassVar[str] = "activity_chat_history_orchestrator"
    instance_prefix: ClassVar[str] = "activity-chat-history-"
    copies_per_write: ClassVar[int] = 3  # the event, the activity's input and its result

    def __init__(self, client: Any, **options: Any) -> None:
        if options.get("summarize"):  # its orchestrator only trims: a summary would need a metadata row of its own
            raise InvalidArgument("the activity store does not summarize: use DurableTaskChatMessageStore")
        super().__init__(client, **options)

    @classmethod
    def register(cls, worker: TaskHubGrpcWorker) -> None:
        """Add the orchestrator and the activity to a worker (before `worker.start()`)."""
        worker.add_orchestrator(activity_chat_history_orchestrator)
        worker.add_activity(enrich_chat_records)

    def initial_state(self) -> dict[str, Any]:
        return EnrichedChatHistory.new(self.writes_per_generation, self.history_budget_bytes)

    async def get_records(self, session_id: str | None) -> list[ChatRecord]:
        """The stored messages with their metadata, oldest first (read-your-writes, like `get_messages`)."""
        status = await self.read_status(session_id) or {"messages": [], "metadata": []}
        if len(status["messages"]) != len(status.get("metadata", ())):
            raise ChatHistoryError(f"session {session_id!r}: the stored messages and their metadata disagree")
        messages = ChatHistory.to_messages(session_id, status["messages"])
        return [ChatRecord(message, meta) for message, meta in zip(messages, status["metadata"], strict=True)]


@tool(approval_mode="never_require")
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return f"sunny, 18 degrees Celsius (sample data for {location})"


def new_agent(chat_client: OpenAIChatCompletionClient, store: DurableTaskActivityChatMessageStore) -> Agent:
    instructions = "You are a research assistant. Answer briefly; use your tools for live data."
    return Agent(
        client=chat_client, instructions=instructions, name="Researcher", tools=[get_weather], context_providers=[store]
    )


async def main(role: str = "all", every: int = 4, timeout: float = 30.0) -> dict[str, Any]:
    """The conversation below, returning what it saw; `--role` says where it and the store's worker run."""
    seen: dict[str, Any] = {}

    async def conversation(scheduler: SchedulerBackend, model: ModelBackend) -> None:
        session_id, control = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("research", "control"))
        on_waiting = waiting_notice(SCRIPT)
        options: dict[str, Any] = {"writes_per_generation": every, "read_timeout": timeout, "on_waiting": on_waiting}
        chat_client = OpenAIChatCompletionClient(**model.client_kwargs())
        client, restarted_client = scheduler.client(), scheduler.client()
        store = DurableTaskActivityChatMessageStore(client, **options)
        try:
            print(f"\n== 1. Each write goes through the enrich activity (continue-as-new every {every} writes) ==")
            agent = new_agent(chat_client, store)
            for text in ("My name is Alice.", "What's the weather in Seattle?", "I live in Paris."):
                await say(agent, store, session_id, text)

            print("\n== 2. Restart: a new scheduler client, store and agent keep only the session id; a control ==")
            restarted = DurableTaskActivityChatMessageStore(restarted_client, **options)
            agent = new_agent(chat_client, restarted)
            seen["recall"] = await say(agent, restarted, session_id, "What is my name?")
            seen["control"] = await say(agent, restarted, control, "What is my name?")

            print("\n== 3. A write retried after a lost acknowledgement is stored once and enriched once ==")
            note = Message("user", ["My favorite drink is tea."], message_id=f"note-{session_id}")
            print(f"User: {note.text}    [saved by the app itself, sent twice as write retry-{session_id}]")
            for _ in range(2):
                await restarted.save_messages(session_id, [note], write_id=f"retry-{session_id}")
            seen["retried"] = await say(agent, restarted, session_id, "What is my favorite drink?")

            print(f"\n== 4. Diagnostics: the metadata the scheduler holds for session {session_id} ==")
            seen["records"] = records = await restarted.get_records(session_id)
            seen["status"] = status = await restarted.read_status(session_id) or {}
            print_diagnostics(records, status)
        finally:
            for each in (session_id, control):  # a real history lives on; the demo leaves a shared hub tidy
                client.terminate_orchestration(store.instance_id(each), recursive=False)
            client.close()
            restarted_client.close()
            await chat_client.client.close()
        print(f"\nEnded the demo's history orchestrations ({session_id}, {control}).")

    register = DurableTaskActivityChatMessageStore.register
    await run_store_sample(role, register=register, demo=conversation, script=SCRIPT, timeout_errors=(HistoryTimeout,))
    return seen


# The demo's plumbing: its printing and its command line.
SCRIPT = "durable_task_activity_chat_message_store.py"


async def say(agent: Agent, store: DurableTaskActivityChatMessageStore, session_id: str, text: str) -> str:
    print(f"User: {text}")
    response = await agent.run(text, session=AgentSession(session_id=session_id))
    status = await store.read_status(session_id) or {}
    counters = " ".join(f"{name}={status[name]}" for name in ("next_sequence", "writes", "duplicate_writes"))
    print(
        f"Agent: {response.text}\n    [scheduler: messages={len(status['messages'])} {counters} "
        f"activity_calls={status['stats']['activity_calls']} generation={status['generation']}]"
    )
    return response.text


def one_line(message: Message) -> str:
    """A message as one line: its text, tool calls and tool results."""
    parts = {
        "text": lambda c: c.text,
        "function_call": lambda c: f"[call {c.name}({c.arguments})]",
        "function_result": lambda c: f"[result: {c.result}]",
    }
    return " ".join(parts.get(content.type, lambda c: f"[{c.type}]")(content) for content in message.contents)


def print_diagnostics(records: list[ChatRecord], status: dict[str, Any]) -> None:
    columns = (
        f"{'seq':>3}  {'role':<9} {'author':<10} {'content types':<16} {'bytes':>5}  {'write':<8} {'stored at':<12}"
    )
    print(f"{columns} text")
    for record in records:
        meta = record.metadata
        print(
            f"{meta['sequence']:>3}  {meta['role']:<9} {meta['author']:<10} {','.join(meta['content_types']):<16} "
            f"{meta['size_bytes']:>5}  {meta['write_id'][:8]:<8} {meta['stored_at'][11:23]:<12} "
            f"{textwrap.shorten(one_line(record.message), 60, placeholder=' ...')}"
        )
    stats = status["stats"]
    print(f"Enriched by worker(s): {', '.join(sorted({record.metadata['worker_id'] for record in records}))}")
    print(f"Running statistics: {stats['messages']} messages, {stats['bytes']:,} bytes, {status['writes']} writes")
    for name in ("activity_calls", "by_role", "by_author", "content_types"):
        print(f"    {name}: {stats[name]}")
    print("    " + " ".join(f"{name}={status[name]}" for name in ChatHistory.COUNTERS[1:]))


if __name__ == "__main__":
    arguments = add_role_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    run_sample(main(arguments.role, timeout=arguments.timeout), errors=(ChatHistoryError,))
