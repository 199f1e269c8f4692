"""A chat message store backed by a Durable Task orchestration: the scheduler's checkpoints hold the history.

`DurableTaskChatMessageStore` is a `HistoryProvider` (the framework's chat message store interface) that keeps
each session's history in one long-lived orchestration (instance id `chat-history-<session id>`):

- `save_messages` raises an `append_messages` event carrying the messages (as dicts) and a write id;
- the orchestrator appends them, skipping a write id or message id it already holds (the client may retry, the
  scheduler delivers at least once), publishes the history in its custom status, and calls continue-as-new every
  few writes so its own event history stays short;
- `get_messages` reads the custom status back with `get_orchestration_state` and, if this store wrote to the
  session, waits until its last write is visible there (read-your-writes), or fails with a clear error.

The orchestrator does no I/O and reads no clock, so replaying it is deterministic.

Size budget. The history travels in gRPC messages: the custom status, the continue-as-new input, and the append
events the worker replays (4 MiB per message by default, less on the managed service), and an oversize payload
can stall an orchestration without an error. So:
- a single write larger than `history_budget_bytes` is refused with `HistoryTooLarge`: nothing is sent, and the
  agent run fails with that one-line error;
- once the stored history passes the budget, the orchestrator drops the oldest exchanges (a cut always lands on a
  user message when one is left, never on a tool result, so a result never loses its call) and counts them in
  `trimmed`;
- the constructor refuses a budget and continue-as-new interval whose worst case could pass the message limit.

Run it:
    python durable_task_chat_message_store.py                  # --role all: scheduler, worker and demo here
    python durable_task_chat_message_store.py --role worker    # a worker, until Ctrl+C / SIGTERM
    python durable_task_chat_message_store.py --role client    # the demo, on DTS_ENDPOINT where a worker runs

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
import asyncio
import json
import uuid
from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import grpc
from agent_framework import Agent, AgentSession, HistoryProvider, Message
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.client import TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from sample_support import ModelBackend, SampleError, SchedulerBackend, run_sample
from sample_support.durable_worker import ENDED, run_store_sample, wait_for_custom_status

APPEND_EVENT = "append_messages"
WRITES_PER_GENERATION = 4  # continue-as-new after this many writes (small, so the demo shows it)
HISTORY_BUDGET_BYTES = 200_000
# Headroom under gRPC's 4 MiB default message size; lower it (and the budget) for the managed service.
SCHEDULER_MESSAGE_LIMIT_BYTES = 3 * 1024 * 1024
REMEMBERED_WRITE_IDS = 200  # a retry of one of the last 200 writes is recognised by its write id
READ_TIMEOUT_SECONDS = 30.0
READ_POLL_SECONDS = 0.01  # a write is usually visible within ~15 ms; each poll reads the whole status
SMALL_BUDGET = 1_200  # the trimming demo's budget: about two exchanges


class HistoryTooLarge(SampleError):
    """A write that does not fit in the history budget; it was not stored."""


# region The orchestrator side: deterministic functions of the orchestration's state


def payload_bytes(value: Any) -> int:
    return len(json.dumps(value).encode())


def new_history_state(every: int, budget_bytes: int) -> dict[str, Any]:
    """A new orchestration's input; it carries everything the orchestration keeps across continue-as-new."""
    return {
        "every": every,
        "budget_bytes": budget_bytes,
        "generation": 0,
        "messages": [],
        "write_ids": [],
        "rejected": [],
        "writes": 0,
        "trimmed": 0,
        "duplicate_writes": 0,
        "duplicate_messages": 0,
    }


def new_messages(state: dict[str, Any], write: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The messages of `write` the history does not hold yet, or None if this write id was applied already."""
    if write["write_id"] in state["write_ids"]:
        state["duplicate_writes"] += 1
        return None
    held = {message["message_id"] for message in state["messages"]}
    fresh = [message for message in write["messages"] if message["message_id"] not in held]
    state["duplicate_messages"] += len(write["messages"]) - len(fresh)
    return fresh


def reject(state: dict[str, Any], write_id: str, reason: str) -> None:
    """Record a write that was not stored, so a reader waiting for it gets an error instead of a timeout."""
    state["write_ids"] = [*state["write_ids"], write_id][-REMEMBERED_WRITE_IDS:]
    state["rejected"] = [*state["rejected"], {"write_id": write_id, "reason": reason}][-REMEMBERED_WRITE_IDS:]


def append(state: dict[str, Any], write_id: str, columns: dict[str, list[Any]]) -> bool:
    """Append one write (`columns`: parallel lists, `messages` first) and trim to the budget; False if refused.

    Trimming drops the oldest messages up to the next user message (or, if none is left, the next message that
    is not a tool result), so the history never starts with a tool result whose call was dropped.
    """
    budget = state["budget_bytes"]
    if (size := payload_bytes(columns)) > budget:
        reject(state, write_id, f"the write has {size:,} bytes, over the history budget of {budget:,}")
        return False
    for name, rows in columns.items():
        state[name].extend(rows)
    state["write_ids"] = [*state["write_ids"], write_id][-REMEMBERED_WRITE_IDS:]
    state["writes"] += 1
    names = list(columns)
    sizes = [payload_bytes([state[name][index] for name in names]) for index in range(len(state["messages"]))]
    roles = [message["role"] for message in state["messages"]]
    total, cut = sum(sizes), 0
    while total > budget:
        later = range(cut + 1, len(roles))
        next_cut = next((i for i in later if roles[i] == "user"), None)
        next_cut = next_cut or next((i for i in later if roles[i] != "tool"), None)
        if next_cut is None:
            break
        total -= sum(sizes[cut:next_cut])
        cut = next_cut
    for name in names:
        del state[name][:cut]
    state["trimmed"] += cut
    return True


def chat_history_orchestrator(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Generator[task.Task, Any, None]:
    # The status reads None after continue-as-new until the new run sets it: publish it first thing.
    ctx.set_custom_status(state)
    for _ in range(state["every"]):
        write = yield ctx.wait_for_external_event(APPEND_EVENT)
        fresh = new_messages(state, write)
        if fresh is not None:
            append(state, write["write_id"], {"messages": fresh})
        ctx.set_custom_status(state)
    state["generation"] += 1
    # save_events=True keeps appends raised while the orchestration restarts.
    ctx.continue_as_new(state, save_events=True)


# endregion

# region The chat message store: the client side


def checked(session_id: str | None) -> str:
    if not session_id:
        raise SampleError("a Durable Task chat message store needs a session id: use agent.create_session()")
    return session_id


class DurableTaskChatMessageStore(HistoryProvider):
    """A chat message store whose history lives in one Durable Task orchestration per session.

    Register the orchestrator on a worker with `DurableTaskChatMessageStore.register(worker)`; pass the store a
    scheduler client and use it like any history provider: `Agent(..., context_providers=[store])`. The interval
    and budget are fixed when a session's orchestration is created; later stores use the orchestration's own.
    """

    DEFAULT_SOURCE_ID: ClassVar[str] = "durable_task"
    instance_prefix: ClassVar[str] = "chat-history-"
    orchestrator: ClassVar[str] = "chat_history_orchestrator"
    # The largest scheduler message is the work item a worker replays: the run's input (the history) plus every
    # write since the last continue-as-new, each this many times (here the event; with an activity also its
    # input and result). One more budget covers the counters and write ids published next to the history.
    copies_per_write: ClassVar[int] = 1
    worker_command: ClassVar[str] = "python durable_task_chat_message_store.py --role worker"

    def __init__(
        self,
        client: TaskHubGrpcClient,
        *,
        writes_per_generation: int = WRITES_PER_GENERATION,
        history_budget_bytes: int = HISTORY_BUDGET_BYTES,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        read_poll_interval: float = READ_POLL_SECONDS,
        source_id: str | None = None,
    ) -> None:
        super().__init__(source_id or self.DEFAULT_SOURCE_ID)
        worst_case = history_budget_bytes * (2 + writes_per_generation * self.copies_per_write)
        if writes_per_generation < 1 or worst_case > SCHEDULER_MESSAGE_LIMIT_BYTES:
            raise ValueError(
                f"a history budget of {history_budget_bytes:,} bytes with continue-as-new every "
                f"{writes_per_generation} writes can put {worst_case:,} bytes in one scheduler message, over "
                f"{SCHEDULER_MESSAGE_LIMIT_BYTES:,}: lower one of them"
            )
        self.client = client
        self.writes_per_generation = writes_per_generation
        self.history_budget_bytes = history_budget_bytes
        self.read_timeout = read_timeout
        self.read_poll_interval = read_poll_interval
        self._started: set[str] = set()
        self._unconfirmed: dict[str, set[str]] = {}  # session id -> write ids not yet seen in the status

    @classmethod
    def register(cls, worker: TaskHubGrpcWorker) -> None:
        """Add the store's orchestrator to a worker (before `worker.start()`)."""
        worker.add_orchestrator(chat_history_orchestrator)

    def instance_id(self, session_id: str | None) -> str:
        return f"{self.instance_prefix}{checked(session_id)}"

    def initial_state(self) -> dict[str, Any]:
        """The orchestration's first input."""
        return new_history_state(self.writes_per_generation, self.history_budget_bytes)

    async def _ensure_started(self, instance_id: str) -> None:
        if instance_id in self._started:
            return
        state = await asyncio.to_thread(self.client.get_orchestration_state, instance_id)
        if state is not None and state.runtime_status in ENDED:
            raise SampleError(f"the history orchestration {instance_id!r} has ended ({state.runtime_status.name})")
        if state is None:
            try:
                await asyncio.to_thread(
                    self.client.schedule_new_orchestration,
                    self.orchestrator,
                    input=self.initial_state(),
                    instance_id=instance_id,
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # another store created it first: use it
                    raise
        self._started.add(instance_id)

    async def save_messages(
        self,
        session_id: str | None,
        messages: Sequence[Message],
        *,
        state: dict[str, Any] | None = None,
        write_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Raise one append event; pass the same `write_id` again to retry a write safely."""
        if not messages:
            return
        instance_id = self.instance_id(session_id)
        write_id = write_id or uuid.uuid4().hex
        records = [message.to_dict() for message in messages]
        for index, record in enumerate(records):
            # Message ids are what the orchestrator de-duplicates by; a retried write reuses the same ids.
            record["message_id"] = record.get("message_id") or f"{write_id}-{index}"
        if (size := payload_bytes(records)) > self.history_budget_bytes:
            raise HistoryTooLarge(
                f"{len(records)} message(s) of {size:,} bytes do not fit in the history budget of "
                f"{self.history_budget_bytes:,} bytes: nothing was stored"
            )
        await self._ensure_started(instance_id)
        data = {"write_id": write_id, "messages": records}
        await asyncio.to_thread(self.client.raise_orchestration_event, instance_id, APPEND_EVENT, data=data)
        self._unconfirmed.setdefault(checked(session_id), set()).add(write_id)

    async def read_status(self, session_id: str | None) -> dict[str, Any] | None:
        """The orchestration's custom status (history and counters) once every write this store sent is in it.

        None if the session has no history yet. Raises `HistoryTooLarge` if the orchestration refused one of
        those writes, and `StatusTimeout` if they are not visible within `read_timeout` (no worker running?).
        """
        instance_id = self.instance_id(session_id)
        unconfirmed = self._unconfirmed.setdefault(checked(session_id), set())
        awaited = frozenset(unconfirmed)  # writes sent while this read waits are awaited by the next read
        if instance_id not in self._started:
            if await asyncio.to_thread(self.client.get_orchestration_state, instance_id) is None:
                return None
            self._started.add(instance_id)

        def visible(status: dict[str, Any] | None) -> bool:
            return status is not None and awaited.issubset(status["write_ids"])

        status = await wait_for_custom_status(
            self.client,
            instance_id,
            visible,
            timeout=self.read_timeout,
            poll_interval=self.read_poll_interval,
            hint=f": is a worker running with {self.orchestrator} registered? (e.g. {self.worker_command})",
        )
        unconfirmed -= awaited
        refused = [entry for entry in status["rejected"] if entry["write_id"] in awaited]
        if refused:
            raise HistoryTooLarge(f"write {refused[0]['write_id']} was not stored: {refused[0]['reason']}")
        return status

    async def get_messages(
        self, session_id: str | None, *, state: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Message]:
        status = await self.read_status(session_id)
        return [Message.from_dict(message) for message in status["messages"]] if status else []

    def end_history(self, session_id: str) -> None:
        """Terminate the session's history orchestration, if there is one (there are no sub-orchestrations)."""
        instance_id = self.instance_id(session_id)
        if self.client.get_orchestration_state(instance_id) is not None:
            self.client.terminate_orchestration(instance_id, recursive=False)


# endregion

# region The demo


INSTRUCTIONS = "You are a friendly assistant. Answer briefly."


def new_agent(model: ModelBackend, store: DurableTaskChatMessageStore) -> Agent:
    client = OpenAIChatCompletionClient(**model.client_kwargs())  # chat completions: the history is ours to send
    return Agent(client=client, instructions=INSTRUCTIONS, name="Assistant", context_providers=[store])


def describe(status: dict[str, Any] | None) -> str:
    if status is None:
        return "[scheduler: no history]"
    return (
        f"[scheduler: messages={len(status['messages'])} writes={status['writes']} trimmed={status['trimmed']} "
        f"generation={status['generation']} duplicate_writes={status['duplicate_writes']} "
        f"bytes={payload_bytes(status['messages']):,}]"
    )


async def say(agent: Agent, session: AgentSession, store: DurableTaskChatMessageStore, text: str) -> str:
    print(f"User: {text}")
    response = await agent.run(text, session=session)
    print(f"Agent: {response.text}")
    print(f"    {describe(await store.read_status(session.session_id))}")
    return response.text


def message_text(message: dict[str, Any]) -> str:
    """A message dict as one line: its text, tool calls and tool results."""
    parts = []
    for content in message["contents"]:
        if content["type"] == "text":
            parts.append(content["text"])
        elif content["type"] == "function_call":
            parts.append(f"[call {content['name']}({content['arguments']})]")
        elif content["type"] == "function_result":
            parts.append(f"[result: {content['result']}]")
        else:
            parts.append(f"[{content['type']}]")
    return " ".join(parts)


async def retry_a_write(store: DurableTaskChatMessageStore, session_id: str, run_id: str) -> dict[str, Any]:
    """Send one write twice under the same write id (a retry after a lost acknowledgement); return the status."""
    note = Message("user", ["Please remember: I prefer tea."], message_id=f"note-{run_id}")
    for attempt in (1, 2):
        await store.save_messages(session_id, [note], write_id=f"retry-{run_id}")
        print(f"Sent write retry-{run_id} (attempt {attempt}).")
    return await wait_for_custom_status(
        store.client,
        store.instance_id(session_id),
        lambda status: bool(status and status["duplicate_writes"]),
        timeout=30,
    )


async def demo(scheduler: SchedulerBackend, model: ModelBackend, every: int, budget: int) -> None:
    run_id = uuid.uuid4().hex[:8]
    session_id, control_id, small_id = f"alice-{run_id}", f"control-{run_id}", f"small-{run_id}"
    client, restarted_client = scheduler.client(), scheduler.client()
    store = DurableTaskChatMessageStore(client, writes_per_generation=every, history_budget_bytes=budget)
    try:
        print(f"\n== 1. A conversation whose history the scheduler keeps (continue-as-new every {every} writes) ==")
        agent = new_agent(model, store)
        session = agent.create_session(session_id=session_id)
        for text in ["My name is Alice.", "I live in Paris.", "My favorite color is blue."]:
            await say(agent, session, store, text)

        print("\n== 2. Restart: a new scheduler client, store and agent; only the session id is kept ==")
        restarted = DurableTaskChatMessageStore(restarted_client, writes_per_generation=every)
        agent = new_agent(model, restarted)
        session = AgentSession(session_id=session_id)
        await say(agent, session, restarted, "What is my name?")
        await say(agent, session, restarted, "Where do I live?")

        print("\n== 3. Control: a new session has no history ==")
        await say(agent, agent.create_session(session_id=control_id), restarted, "What is my name?")

        print("\n== 4. A retried write is stored once ==")
        status = await retry_a_write(restarted, session_id, run_id)
        print(f"    {describe(status)}")

        print("\n== 5. The size budget ==")
        try:
            await restarted.save_messages(session_id, [Message("user", ["x" * budget])])
        except HistoryTooLarge as error:
            print(f"Refused: {error}")
        small = DurableTaskChatMessageStore(client, writes_per_generation=every, history_budget_bytes=SMALL_BUDGET)
        agent = new_agent(model, small)
        print(f"A store with a {SMALL_BUDGET:,}-byte budget drops its oldest exchanges, and with them what they said:")
        session = agent.create_session(session_id=small_id)
        for text in [
            "My name is Alice.",
            "I live in Paris.",
            "Tell me a joke.",
            "Where do I live?",
            "What is my name?",
        ]:
            await say(agent, session, small, text)

        print(f"\n== 6. What the scheduler holds for session {session_id} ==")
        state = client.get_orchestration_state(store.instance_id(session_id))
        assert state is not None
        status = state.get_custom_status()
        print(f"Orchestration {state.instance_id}: {state.runtime_status.name}, {describe(status)}")
        for number, message in enumerate(status["messages"], start=1):
            print(f"  {number:2}. {message['role']:<9} {message.get('author_name') or '':<10} {message_text(message)}")
    finally:
        for each in (session_id, control_id, small_id):
            store.end_history(each)  # a real history lives on; the demo leaves a shared task hub tidy
        client.close()
        restarted_client.close()
    print(f"\nEnded the demo's history orchestrations ({session_id}, {control_id}, {small_id}).")


async def main(role: str = "all", every: int = WRITES_PER_GENERATION, budget: int = HISTORY_BUDGET_BYTES) -> None:
    # The store's worker never calls the model: only the process running the agents needs one.
    await run_store_sample(
        role,
        register=DurableTaskChatMessageStore.register,
        demo=lambda scheduler, model: demo(scheduler, model, every, budget),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["all", "worker", "client"], default="all")
    arguments = parser.parse_args()
    run_sample(main(arguments.role))
