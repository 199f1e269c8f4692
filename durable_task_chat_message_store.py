"""A chat message store whose history lives in a Durable Task orchestration, one per session.

`save_messages` raises an event; `chat_history_orchestrator` appends the messages (a retried write or a message it
holds is skipped), drops whole oldest exchanges past a byte budget (or, with `summarize=True`, has the
`summarize_history` activity replace them by one summary), publishes the history as its custom status and
continues-as-new every few writes; `get_messages` reads that status once this store's writes are in it. The state
and the errors live in durable_chat_history.py (shared with the activity store).

Run it: python durable_task_chat_message_store.py [--role all|worker|client] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import grpc
from agent_framework import Agent, AgentSession, HistoryProvider, Message, SupportsChatGetResponse
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.client import OrchestrationState, OrchestrationStatus, TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from durable_chat_history import (
    ChatHistory,
    ChatHistoryError,
    HistoryTimeout,
    HistoryTooLarge,
    InvalidArgument,
)
from sample_support import ModelBackend, SchedulerBackend, run_sample, select_model
from sample_support.durable_worker import add_role_arguments, run_store_sample, waiting_notice

ENDED = (OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED)


def chat_history_orchestrator(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Generator[task.Task, Any, None]:
    """One session's history: applies append events one at a time, in arrival order; deterministic (no I/O)."""
    history = ChatHistory(state)
    history.publish(ctx)  # the status reads None after a continue-as-new until the new run sets it
    for _ in range(state["every"]):
        write = yield ctx.wait_for_external_event(ChatHistory.APPEND_EVENT)
        if (fresh := history.new_messages(write)) is not None and history.add(write["write_id"], {"messages": fresh}):
            if older := history.to_summarize(keep=len(fresh)):  # summarize=True and past the budget
                try:  # the model is called in an activity: an orchestrator does no I/O
                    summary = yield ctx.call_activity("summarize_history", input=older)  # see `register`
                    history.summarized(write["write_id"], len(older), summary)
                except task.TaskFailedError as error:  # the write is kept; `trim` drops the exchanges instead
                    history.summary_failed(f"the summary activity failed: {error.details.message}")
            history.trim()
        history.publish(ctx)
    state["generation"] += 1
    ctx.continue_as_new(state, save_events=True)  # save_events: appends raised during the restart are kept


class DurableTaskChatMessageStore(HistoryProvider):
    """A history provider that keeps each session's history in a Durable Task orchestration.

    `register(worker)` adds the orchestrator to a worker; then use the store like any history provider. A session's
    budget, interval and `summarize` are fixed when its orchestration starts. With `summarize=True` the oldest
    exchanges past the budget become one summary (the earlier one included; the originals are gone); a summary that
    fails or does not fit is counted (`summary_failures`, `summary_error`) and they are dropped instead.
    `on_waiting(what)`: once per read that waits 1 s."""

    DEFAULT_SOURCE_ID: ClassVar[str] = "durable_task"
    orchestrator_name: ClassVar[str] = "chat_history_orchestrator"
    instance_prefix: ClassVar[str] = "chat-history-"
    copies_per_write: ClassVar[int] = 1  # how often one write is in the work item a worker replays
    message_limit_bytes: ClassVar[int] = 3 * 1024 * 1024  # under gRPC's 4 MiB default; lower for the managed service

    def __init__(
        self,
        client: TaskHubGrpcClient,
        *,
        writes_per_generation: int = 4,
        history_budget_bytes: int = 200_000,
        read_timeout: float = 30.0,
        on_waiting: Callable[[str], None] | None = None,
        source_id: str | None = None,
        summarize: bool = False,
    ) -> None:
        super().__init__(source_id or self.DEFAULT_SOURCE_ID)
        sizes = (writes_per_generation, history_budget_bytes)
        if not all(type(value) is int and value > 0 for value in sizes) or not read_timeout > 0:
            raise InvalidArgument(
                f"writes_per_generation ({writes_per_generation!r}) and history_budget_bytes ({history_budget_bytes!r})"
                f" must be positive integers, read_timeout ({read_timeout!r}) a positive number of seconds"
            )
        # The largest work item a worker replays: the generation's input, each write (and summary) since, the status.
        worst = history_budget_bytes * (2 + writes_per_generation * (self.copies_per_write + 2 * summarize))
        if worst > self.message_limit_bytes:
            raise InvalidArgument(
                f"a history budget of {history_budget_bytes:,} bytes with continue-as-new every {writes_per_generation}"
                f" writes can put {worst:,} bytes in a scheduler message (over {self.message_limit_bytes:,}): lower one"
            )
        self.client, self.on_waiting, self.read_timeout = client, on_waiting, read_timeout
        self.writes_per_generation, self.history_budget_bytes, self.summarize = (*sizes, summarize)
        self._unconfirmed: dict[str, set[str]] = {}  # instance id -> write ids not yet seen in its status; started

    @classmethod
    def register(cls, worker: TaskHubGrpcWorker, *, summarizer: SupportsChatGetResponse[Any] | None = None) -> None:
        """Add the store's orchestrator to a worker (before `worker.start()`); with `summarizer` (a chat client), also
        the `summarize_history` activity stores with `summarize=True` need. Call it on the event loop the chat client
        runs on: each summary runs there, so keep that loop running until `worker.stop()` has returned."""
        worker.add_orchestrator(chat_history_orchestrator)
        if summarizer is not None:
            loop = asyncio.get_running_loop()  # the activity runs on a worker thread; the client lives on this loop

            def summarize_history(ctx: task.ActivityContext, records: list[dict[str, Any]]) -> str:
                return asyncio.run_coroutine_threadsafe(ChatHistory.summarize(summarizer, records), loop).result()

            worker.add_activity(summarize_history)

    def initial_state(self) -> dict[str, Any]:
        return ChatHistory.new(self.writes_per_generation, self.history_budget_bytes, summarize=self.summarize)

    def instance_id(self, session_id: str | None) -> str:
        """The session's orchestration; ids are percent-encoded, so each id gets an instance of its own."""
        if not session_id or not isinstance(session_id, str):
            raise InvalidArgument("a Durable Task chat history needs a session id: use agent.create_session()")
        parts = [session_id] if self.source_id == self.DEFAULT_SOURCE_ID else [self.source_id, session_id]
        try:
            instance_id = self.instance_prefix + ":".join(quote(part, safe="") for part in parts)
        except UnicodeEncodeError:
            raise InvalidArgument(f"session id {session_id!r} is not valid UTF-8") from None
        if len(instance_id) > 256:  # a cap every scheduler backend accepts
            raise InvalidArgument(f"a session id of {len(session_id):,} characters is too long for an instance id")
        return instance_id

    async def save_messages(
        self, session_id: str | None, messages: Sequence[Message], *, write_id: str | None = None, **kwargs: Any
    ) -> None:
        """Raise one append event; pass the same `write_id` again to retry a write safely."""
        instance_id, write_id = self.instance_id(session_id), write_id or uuid.uuid4().hex
        if records := ChatHistory.records(session_id, messages, write_id, self.history_budget_bytes):
            if instance_id not in self._unconfirmed:  # this store's first write to the session: start its history
                await self._start(session_id, instance_id)
            data = {"write_id": write_id, "messages": records}
            await asyncio.to_thread(
                self.client.raise_orchestration_event, instance_id, ChatHistory.APPEND_EVENT, data=data
            )
            self._unconfirmed.setdefault(instance_id, set()).add(write_id)

    async def _start(self, session_id: str | None, instance_id: str) -> None:
        """Start the session's history unless it exists; one that exists must be this store's and running."""
        if (state := await asyncio.to_thread(self.client.get_orchestration_state, instance_id)) is not None:
            self._checked_status(session_id, instance_id, state)
            return
        try:
            start, initial = self.client.schedule_new_orchestration, self.initial_state()
            await asyncio.to_thread(start, self.orchestrator_name, input=initial, instance_id=instance_id)
        except grpc.RpcError as error:  # ALREADY_EXISTS: another store started it this moment
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                raise

    async def get_messages(self, session_id: str | None, **kwargs: Any) -> list[Message]:
        status = await self.read_status(session_id)
        return ChatHistory.to_messages(session_id, status["messages"]) if status else []

    async def read_status(self, session_id: str | None) -> dict[str, Any] | None:
        """The custom status once every write this store sent is in it (None: the session was never written); raises
        `HistoryTooLarge` for a write the orchestration refused and `HistoryTimeout` after `read_timeout`."""
        instance_id = self.instance_id(session_id)
        awaited = frozenset(self._unconfirmed.get(instance_id, ()))  # writes sent meanwhile are the next read's
        started, noticed = time.monotonic(), False
        while True:
            state = await asyncio.to_thread(self.client.get_orchestration_state, instance_id)
            if state is None and not awaited:
                return None
            status = self._checked_status(session_id, instance_id, state)
            if status is not None and awaited.issubset(status["write_ids"]):
                break
            if (waited := time.monotonic() - started) >= self.read_timeout:
                raise HistoryTimeout(
                    f"session {session_id!r}: {instance_id} lacks this store's writes after {self.read_timeout:g} s: "
                    f"is a worker with {self.orchestrator_name}{' and summarize_history' * self.summarize} running?"
                )
            if self.on_waiting and not noticed and waited >= 1:
                noticed = True
                self.on_waiting(f"a worker with {self.orchestrator_name} to apply the writes to session {session_id!r}")
            # A tenth of the time waited so far, 5 to 100 ms: a write shows within ~15 ms; a slow scheduler is spared.
            await asyncio.sleep(min(max(waited / 10, 0.005), 0.1))
        if awaited:
            self._unconfirmed[instance_id] -= awaited
        for entry in status["rejected"]:
            if entry["write_id"] in awaited:
                error = HistoryTooLarge if entry.get("too_large") else ChatHistoryError
                raise error(f"session {session_id!r}: write {entry['write_id']} was not stored: {entry['reason']}")
        return status

    def _checked_status(self, session_id: str | None, instance_id: str, state: OrchestrationState | None) -> Any:
        """The custom status of a running history this store can read; otherwise an error naming the session."""
        where = f"session {session_id!r} ({instance_id})"
        if state is not None and state.name != self.orchestrator_name:
            raise ChatHistoryError(f"{where} is a {state.name!r} orchestration, not a {self.orchestrator_name} history")
        if state is None or state.runtime_status in ENDED:
            raise ChatHistoryError(f"{where}: the history has ended or no longer exists")
        return ChatHistory.checked(where, state.get_custom_status())  # JSON: this store's orchestrator set it


def new_agent(chat_client: OpenAIChatCompletionClient, store: DurableTaskChatMessageStore) -> Agent:
    # Chat Completions: the history is ours to send (the Responses API would keep its own copy).
    instructions = "You are a friendly assistant. Answer briefly."
    return Agent(client=chat_client, instructions=instructions, name="Assistant", context_providers=[store])


async def main(role: str = "all", every: int = 4, budget: int = 200_000, timeout: float = 30.0) -> dict[str, Any]:
    """The conversation below, returning what it saw; `--role` says where it and the store's worker run."""
    seen: dict[str, Any] = {}

    async def conversation(scheduler: SchedulerBackend, _: ModelBackend) -> None:
        ids = [f"{name}-{uuid.uuid4().hex[:8]}" for name in ("alice", "control", "small", "summarized")]
        alice, control, small_id, summarized_id = ids
        options: dict[str, Any] = {"writes_per_generation": every, "read_timeout": timeout}
        options["on_waiting"] = waiting_notice(SCRIPT)
        client, restarted_client = scheduler.client(), scheduler.client()
        store = DurableTaskChatMessageStore(client, history_budget_bytes=budget, **options)
        try:
            print(f"\n== 1. A conversation whose history the scheduler keeps (continue-as-new every {every} writes) ==")
            agent = new_agent(chat_client, store)
            for text in ("My name is Alice.", "I live in Paris.", "My favorite color is blue."):
                await say(agent, store, alice, text)

            print("\n== 2. Restart: a new scheduler client, store and agent keep only the session id; a control ==")
            restarted = DurableTaskChatMessageStore(restarted_client, **options)
            agent = new_agent(chat_client, restarted)
            seen["recall"] = [await say(agent, restarted, alice, q) for q in ("What is my name?", "Where do I live?")]
            seen["control"] = await say(agent, restarted, control, "What is my name?")

            print("\n== 3. A write retried after a lost acknowledgement is stored once ==")
            note = Message("user", ["My favorite drink is tea."], message_id=f"note-{alice}")
            print(f"User: {note.text}    [saved by the app itself, sent twice as write retry-{alice}]")
            for _ in range(2):
                await restarted.save_messages(alice, [note], write_id=f"retry-{alice}")
            seen["retried"] = await say(agent, restarted, alice, "What is my favorite drink?")
            seen["status"], messages = await restarted.read_status(alice), await restarted.get_messages(alice)
            print(f"What the scheduler holds in {restarted.instance_id(alice)}:")
            for number, message in enumerate(messages, 1):
                print(f"  {number:2}. {message.role:<9} {message.author_name or '':<9} {message.text}")

            print("\n== 4. The size budget: a write over it is refused, the oldest exchanges are dropped ==")
            try:
                await restarted.save_messages(alice, [Message("user", ["x" * budget])])
            except HistoryTooLarge as error:
                print(f"Refused: {error}")
                seen["refused"] = str(error)
            print("A store with a 1,200-byte budget keeps about two exchanges:")
            small = DurableTaskChatMessageStore(client, history_budget_bytes=1_200, **options)
            agent = new_agent(chat_client, small)
            seen["small"] = [await say(agent, small, small_id, text) for text in SMALL_TALK]
            seen["small_status"] = await small.read_status(small_id)

            print("\n== 5. The same budget with summarize=True: the oldest exchanges become one summary ==")
            summarizing = DurableTaskChatMessageStore(client, history_budget_bytes=1_200, summarize=True, **options)
            agent = new_agent(chat_client, summarizing)
            seen["summarized"] = [await say(agent, summarizing, summarized_id, text) for text in SMALL_TALK]
            seen["summarized_status"] = status = await summarizing.read_status(summarized_id)
            print(f"The history now begins with: {status['messages'][0]['contents'][0]['text']}")
        finally:
            for each in ids:  # a real history lives on; the demo leaves a shared hub tidy
                client.terminate_orchestration(store.instance_id(each), recursive=False)
            client.close()
            restarted_client.close()
        print(f"\nEnded the demo's history orchestrations ({', '.join(ids)}).")

    # One chat client, on this event loop: the agents' and the worker's (which calls the model only for summaries).
    chat_client = OpenAIChatCompletionClient(**select_model().client_kwargs())
    register = functools.partial(DurableTaskChatMessageStore.register, summarizer=chat_client)
    try:
        await run_store_sample(role, register=register, demo=conversation, script=SCRIPT, **ROLE_OPTIONS)
    finally:
        await chat_client.client.close()  # after the worker stopped
    return seen


# The demo's plumbing: its printing and its command line.
SCRIPT = "durable_task_chat_message_store.py"
ROLE_OPTIONS: dict[str, Any] = {"timeout_errors": (HistoryTimeout,), "worker_uses_model": True}  # for summaries
SMALL_TALK = ("My name is Alice.", "I live in Paris.", "Tell me a joke.", "Where do I live?", "What is my name?")


async def say(agent: Agent, store: DurableTaskChatMessageStore, session_id: str, text: str) -> str:
    print(f"User: {text}")
    response = await agent.run(text, session=AgentSession(session_id=session_id))
    status = await store.read_status(session_id) or {}
    names = (*ChatHistory.COUNTERS[:-1], *ChatHistory.SUMMARY_COUNTERS[:2], "bytes")
    counters = " ".join(f"{name}={status[name]:,}" for name in names if name in status)
    print(f"Agent: {response.text}\n    [scheduler: messages={len(status['messages'])} {counters}]")
    return response.text


if __name__ == "__main__":
    arguments = add_role_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    run_sample(main(arguments.role, timeout=arguments.timeout), errors=(ChatHistoryError,))
