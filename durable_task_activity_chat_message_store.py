"""The Durable Task chat message store with every write routed through an activity that enriches the records.

`DurableTaskActivityChatMessageStore` extends `DurableTaskChatMessageStore` (see
durable_task_chat_message_store.py): `save_messages` still raises an append event, but the orchestrator now hands
the new messages to the `enrich_chat_records` activity (`ctx.call_activity`), which returns them with metadata:
sequence number, stored-at time, role, author (the agent's name), content types, size, worker id and write id.
The orchestrator keeps the messages and their metadata side by side and publishes both, plus running statistics
(messages and bytes per role, per author, per content type; activity calls; duplicates; trimmed), in its custom
status: diagnostics any client can read from the scheduler without touching the worker.

Idempotency: the orchestrator assigns the sequence numbers (the activity's input carries the first one) and drops
a write id or message id it already holds before calling the activity, so a retried write adds nothing; and an
activity run twice with the same input (delivery is at-least-once) returns the same records, of which the
orchestrator keeps the one result the scheduler recorded. The clock and the worker id are read in the activity,
never in the orchestrator, so replays stay deterministic.

The size budget is the base store's: a write over `history_budget_bytes` (messages plus metadata) is refused with
a clear error, and the oldest exchanges are trimmed once the history passes it. A write crosses the wire three
times here (event, activity input, activity result), which the constructor's worst-case check accounts for.

Use it from other code:
    store = DurableTaskActivityChatMessageStore(scheduler_client, writes_per_generation=4)
    DurableTaskActivityChatMessageStore.register(worker)   # orchestrator + activity, before worker.start()
    agent = Agent(client=..., name="Researcher", context_providers=[store])
    records = await store.get_records(session.session_id)  # ChatRecord(message, metadata) in sequence order
    status = await store.read_status(session.session_id)   # status["stats"]: the running statistics

Run it:
    python durable_task_activity_chat_message_store.py                 # scheduler, worker and demo here
    python durable_task_activity_chat_message_store.py --role worker   # a worker, until Ctrl+C / SIGTERM
    python durable_task_activity_chat_message_store.py --role client   # the demo, on DTS_ENDPOINT

Prerequisites: none. With nothing configured it uses a deterministic offline model served on a loopback port
and an embedded Durable Task scheduler (real gRPC). Against real services set, in the environment or `.env`:
    OPENAI_API_KEY + OPENAI_MODEL (optional OPENAI_BASE_URL), or
    AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_MODEL (+ AZURE_OPENAI_API_KEY, or an `az login`);
    DTS_ENDPOINT + DTS_TASKHUB: the Durable Task Scheduler emulator (http://localhost:8080, task hub `default`)
    or Azure (https://..., authenticated with `az login` / a managed identity).
Redis (REDIS_URL) is not used here.
"""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar

from agent_framework import Agent, AgentSession, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.worker import TaskHubGrpcWorker

from durable_task_chat_message_store import (
    APPEND_EVENT,
    WRITES_PER_GENERATION,
    DurableTaskChatMessageStore,
    append,
    message_text,
    new_messages,
    payload_bytes,
    reject,
    retry_a_write,
)
from sample_support import ModelBackend, SchedulerBackend, run_sample
from sample_support.durable_worker import run_store_sample

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


# region The activity and the orchestrator


def enrich_chat_records(ctx: task.ActivityContext, write: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return the write's messages with one metadata record each; the same input gives the same ids and numbers."""
    stored_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    metadata = [
        {
            "sequence": write["first_sequence"] + index,
            "message_id": message["message_id"],
            "write_id": write["write_id"],
            "role": message["role"],
            "author": message.get("author_name") or message["role"],
            "content_types": sorted({content["type"] for content in message["contents"]}),
            "size_bytes": payload_bytes(message),
            "stored_at": stored_at,
            "worker_id": WORKER_ID,
        }
        for index, message in enumerate(write["messages"])
    ]
    return {"messages": write["messages"], "metadata": metadata}


def count(tally: dict[str, int], key: str, amount: int = 1) -> None:
    tally[key] = tally.get(key, 0) + amount


def record_statistics(state: dict[str, Any], metadata: list[dict[str, Any]]) -> None:
    """Running totals since the session began: trimming drops messages, not their counts."""
    stats = state["stats"]
    for record in metadata:
        stats["messages"] += 1
        stats["bytes"] += record["size_bytes"]
        count(stats["by_role"], record["role"])
        count(stats["by_author"], record["author"])
        for content_type in record["content_types"]:
            count(stats["content_types"], content_type)
    state["next_sequence"] += len(metadata)


def activity_chat_history_orchestrator(
    ctx: task.OrchestrationContext, state: dict[str, Any]
) -> Generator[task.Task, Any, None]:
    # The status reads None after continue-as-new until the new run sets it: publish it first thing.
    ctx.set_custom_status(state)
    for _ in range(state["every"]):
        write = yield ctx.wait_for_external_event(APPEND_EVENT)
        write_id = write["write_id"]
        fresh = new_messages(state, write)
        if fresh is None:
            pass  # a write id already applied
        elif not fresh:
            append(state, write_id, {"messages": [], "metadata": []})  # only duplicates: nothing to enrich
        elif (size := payload_bytes(fresh)) > state["budget_bytes"]:
            reject(
                state, write_id, f"the write has {size:,} bytes, over the history budget of {state['budget_bytes']:,}"
            )
        else:
            try:
                enriched = yield ctx.call_activity(
                    enrich_chat_records,
                    input={"write_id": write_id, "messages": fresh, "first_sequence": state["next_sequence"]},
                )
                state["stats"]["activity_calls"] += 1
                if append(state, write_id, enriched):
                    record_statistics(state, enriched["metadata"])
            except task.TaskFailedError as error:
                reject(state, write_id, f"the enrich activity failed: {error.details.message}")
        ctx.set_custom_status(state)
    state["generation"] += 1
    ctx.continue_as_new(state, save_events=True)


# endregion

# region The store


@dataclass
class ChatRecord:
    """One stored message and the metadata the activity recorded for it."""

    message: Message
    metadata: dict[str, Any]


class DurableTaskActivityChatMessageStore(DurableTaskChatMessageStore):
    """`DurableTaskChatMessageStore` whose writes go through the `enrich_chat_records` activity.

    Register both on a worker with `DurableTaskActivityChatMessageStore.register(worker)`.
    """

    DEFAULT_SOURCE_ID: ClassVar[str] = "durable_task_activity"
    instance_prefix: ClassVar[str] = "activity-chat-history-"
    orchestrator: ClassVar[str] = "activity_chat_history_orchestrator"
    copies_per_write: ClassVar[int] = 3
    worker_command: ClassVar[str] = "python durable_task_activity_chat_message_store.py --role worker"

    @classmethod
    def register(cls, worker: TaskHubGrpcWorker) -> None:
        worker.add_orchestrator(activity_chat_history_orchestrator)
        worker.add_activity(enrich_chat_records)

    def initial_state(self) -> dict[str, Any]:
        stats = {"messages": 0, "bytes": 0, "activity_calls": 0, "by_role": {}, "by_author": {}, "content_types": {}}
        return {**super().initial_state(), "metadata": [], "next_sequence": 1, "stats": stats}

    async def get_records(self, session_id: str | None) -> list[ChatRecord]:
        """The stored messages with their metadata, oldest first (read-your-writes, like `get_messages`)."""
        status = await self.read_status(session_id)
        if status is None:
            return []
        return [
            ChatRecord(Message.from_dict(message), metadata)
            for message, metadata in zip(status["messages"], status["metadata"], strict=True)
        ]


# endregion

# region The demo


@tool(approval_mode="never_require")
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return f"The weather in {location} is sunny, 18 degrees Celsius."


def new_agent(model: ModelBackend, store: DurableTaskActivityChatMessageStore) -> Agent:
    return Agent(
        client=OpenAIChatCompletionClient(**model.client_kwargs()),
        instructions="You are a research assistant. Answer briefly; use your tools for live data.",
        name="Researcher",
        tools=[get_weather],
        context_providers=[store],
    )


def describe(status: dict[str, Any]) -> str:
    return (
        f"[scheduler: messages={len(status['messages'])} next_sequence={status['next_sequence']} "
        f"activity_calls={status['stats']['activity_calls']} writes={status['writes']} "
        f"duplicate_writes={status['duplicate_writes']} generation={status['generation']}]"
    )


async def say(agent: Agent, session: AgentSession, store: DurableTaskActivityChatMessageStore, text: str) -> None:
    print(f"User: {text}")
    response = await agent.run(text, session=session)
    print(f"Agent: {response.text}")
    status = await store.read_status(session.session_id)
    assert status is not None
    print(f"    {describe(status)}")


def print_diagnostics(records: list[ChatRecord], status: dict[str, Any]) -> None:
    header = (
        f"{'seq':>3}  {'role':<9} {'author':<10} {'content types':<16} {'bytes':>5}  {'write':<8} {'stored at':<12}"
    )
    print(f"{header} text")
    for record in records:
        meta = record.metadata
        print(
            f"{meta['sequence']:>3}  {meta['role']:<9} {meta['author']:<10} {','.join(meta['content_types']):<16} "
            f"{meta['size_bytes']:>5}  {meta['write_id'][:8]:<8} {meta['stored_at'][11:23]:<12} "
            f"{message_text(record.message.to_dict())[:50]}"
        )
    stats = status["stats"]
    print(f"Enriched by worker(s): {', '.join(sorted({record.metadata['worker_id'] for record in records}))}")
    print(
        f"Running statistics: {stats['messages']} messages, {stats['bytes']:,} bytes, "
        f"{stats['activity_calls']} activity calls, {status['writes']} writes"
    )
    print(f"    by role: {stats['by_role']}")
    print(f"    by author: {stats['by_author']}")
    print(f"    by content type: {stats['content_types']}")
    print(
        f"    duplicate_writes={status['duplicate_writes']} duplicate_messages={status['duplicate_messages']} "
        f"trimmed={status['trimmed']} generation={status['generation']}"
    )


async def demo(scheduler: SchedulerBackend, model: ModelBackend, every: int) -> None:
    run_id = uuid.uuid4().hex[:8]
    session_id, control_id = f"research-{run_id}", f"control-{run_id}"
    client, restarted_client = scheduler.client(), scheduler.client()
    store = DurableTaskActivityChatMessageStore(client, writes_per_generation=every)
    try:
        print(f"\n== 1. Each write goes through the enrich activity (continue-as-new every {every} writes) ==")
        agent = new_agent(model, store)
        session = agent.create_session(session_id=session_id)
        for text in ["My name is Alice.", "What's the weather in Seattle?", "I live in Paris."]:
            await say(agent, session, store, text)

        print("\n== 2. Restart: a new scheduler client, store and agent; only the session id is kept ==")
        restarted = DurableTaskActivityChatMessageStore(restarted_client, writes_per_generation=every)
        agent = new_agent(model, restarted)
        await say(agent, AgentSession(session_id=session_id), restarted, "What is my name?")

        print("\n== 3. Control: a new session has no history ==")
        await say(agent, agent.create_session(session_id=control_id), restarted, "What is my name?")

        print("\n== 4. A retried write is stored once and enriched once ==")
        status = await retry_a_write(restarted, session_id, run_id)
        print(f"    {describe(status)}")

        print(f"\n== 5. Diagnostics: the metadata the scheduler holds for session {session_id} ==")
        print_diagnostics(await restarted.get_records(session_id), status)
    finally:
        for each in (session_id, control_id):
            store.end_history(each)  # a real history lives on; the demo leaves a shared task hub tidy
        client.close()
        restarted_client.close()
    print(f"\nEnded the demo's history orchestrations ({session_id}, {control_id}).")


async def main(role: str = "all", every: int = WRITES_PER_GENERATION) -> None:
    # The store's worker never calls the model: only the process running the agents needs one.
    await run_store_sample(
        role,
        register=DurableTaskActivityChatMessageStore.register,
        demo=lambda scheduler, model: demo(scheduler, model, every),
    )


# endregion


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["all", "worker", "client"], default="all")
    arguments = parser.parse_args()
    run_sample(main(arguments.role))
