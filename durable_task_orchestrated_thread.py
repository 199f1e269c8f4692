"""A conversation thread orchestrated by the Durable Task Scheduler: every user turn is a checkpointed activity.

One long-lived orchestration per thread (instance id = thread id) owns the thread:

- the client raises a `user_turn` external event (the message and a turn id) for every user turn;
- the orchestrator calls the `run_agent_turn` activity, which restores the `AgentSession` (the thread) from
  its dict, runs the agent for that one turn, and returns the reply plus the updated session dict;
- the orchestrator keeps the session in its own state, publishes a custom status (turn count, last turn id,
  last reply, generation) that the client reads the reply from, and calls continue-as-new every N turns so
  its history stays short and every turn costs the same.

The history lives in the session's in-memory chat message store, so it travels inside the session dict and
the scheduler checkpoints it with the orchestration: no other database. The agent runs only in the
activity; the orchestrator does no I/O and reads no clock, so replaying it is deterministic. An activity
may run twice (delivery is at-least-once), but it writes nothing: only the result the orchestrator
records counts. A turn id the thread has already answered is not answered again.

Size budget: the session dict rides in gRPC messages (4 MiB by default, less on the managed service), and
an oversize payload can stall an orchestration without an error. So the activity drops the oldest whole
exchanges once the session's JSON passes `--session-budget` bytes (the status counts them), a message
or reply longer than MAX_TURN_CHARS fails that one turn with a clear error, and a thread whose generation
could replay more than SCHEDULER_MESSAGE_LIMIT_BYTES in one step (`--every` x the budget) is refused at start.

One chat client per worker process: building an OpenAI client costs ~40 ms, a turn on a reused one ~3 ms
(measured here with the offline model), so `AgentTurns` builds the client and agent once and runs every
turn on one event loop of its own.

Run it:
    python durable_task_orchestrated_thread.py                  # --role all: scheduler, worker and client here
    python durable_task_orchestrated_thread.py --role worker    # a worker, until Ctrl+C / SIGTERM
    python durable_task_orchestrated_thread.py --role client [--thread ID] [--say TEXT ...]

`--role worker` and `--role client` talk to DTS_ENDPOINT, for example the embedded scheduler as its own
process: `python -m sample_support.serve_scheduler --port 8080`, then `export DTS_ENDPOINT=http://localhost:8080`
in the worker's and the client's terminals. Run the client twice: the second run continues the same thread.

Prerequisites: none. With nothing configured it uses a deterministic offline model served on a loopback
port and an embedded Durable Task scheduler (real gRPC). Against real services set, in the environment or
in `.env`:
    OPENAI_API_KEY + OPENAI_MODEL (optional OPENAI_BASE_URL), or
    AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_MODEL (+ AZURE_OPENAI_API_KEY, or an `az login`);
    DTS_ENDPOINT + DTS_TASKHUB: the Durable Task Scheduler emulator (http://localhost:8080, task hub
    `default`) or Azure (https://..., authenticated with `az login` / a managed identity).
Redis (REDIS_URL) is not used here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import uuid
from collections.abc import Generator
from typing import Any

import grpc
from agent_framework import Agent, AgentSession, InMemoryHistoryProvider, Message
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.client import TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from sample_support import ModelBackend, SampleError, SchedulerBackend, open_backends, run_sample
from sample_support.durable_worker import (
    ENDED,
    StatusTimeout,
    require_shared_scheduler,
    serve_until_stopped,
    wait_for_custom_status,
)

INSTRUCTIONS = "You are a friendly assistant. Answer briefly."
USER_TURN = "user_turn"  # the external event that carries one user turn
HISTORY = InMemoryHistoryProvider.DEFAULT_SOURCE_ID  # where the chat message store keeps messages in session.state
TURNS_PER_GENERATION = 3  # continue-as-new after this many turns (small, so the demo shows it)
SESSION_BUDGET_BYTES = 256_000
MAX_TURN_CHARS = 32_000
RECENT_TURNS = 5  # replies kept in the custom status, for clients that raised several turns at once
REMEMBERED_TURN_IDS = 100  # a duplicate of one of the last 100 turn ids is ignored
# Headroom under gRPC's 4 MiB default message size; lower it (and the budget) for the managed service.
SCHEDULER_MESSAGE_LIMIT_BYTES = 3 * 1024 * 1024
REPLY_TIMEOUT_SECONDS = 60.0
# How often the client reads the custom status while it waits for a reply (one gRPC call per read): a reply lands
# tens of milliseconds after its event, and polling every 50 ms added ~25 ms to every turn on average.
REPLY_POLL_SECONDS = 0.005
START_WORKER_HINT = "python durable_task_orchestrated_thread.py --role worker"


# region The activity: one agent turn


class TurnRejected(Exception):
    """A turn that cannot be stored within the size budget; the orchestration reports it for that turn id."""


def json_bytes(value: Any) -> int:
    return len(json.dumps(value).encode())


def trim_to_budget(session: dict[str, Any], budget: int) -> int:
    """Drop the oldest exchanges until the session dict's JSON fits in `budget` bytes; return how many messages went.

    An exchange starts at a user message, so a tool result is never kept without the call it answers. The session
    is serialized once (a 100-message session takes milliseconds): each dropped message takes its own JSON and the
    ", " that separated it from the next one.
    """
    messages = session["state"][HISTORY]["messages"]
    size = json_bytes(session)
    dropped = 0
    while size > budget:
        next_exchange = next((i for i, message in enumerate(messages) if i > 0 and message["role"] == "user"), None)
        if next_exchange is None:
            raise TurnRejected(f"this turn alone needs {size:,} bytes, over the session budget of {budget:,}")
        size -= sum(json_bytes(message) + len(", ") for message in messages[:next_exchange])
        del messages[:next_exchange]
        dropped += next_exchange
    return dropped


async def take_turn(agent: Agent, turn: dict[str, Any]) -> dict[str, Any]:
    """Restore the thread, run the agent for one user message, and return the reply and the new session dict."""
    if turn["session"] is None:
        session = AgentSession(session_id=turn["thread_id"])
    else:
        session = AgentSession.from_dict(turn["session"])
    # The session dict is all that carries the conversation: the agent itself remembers nothing between turns.
    # The turn id doubles as the user message's id, so the stored history names the turn it came from.
    response = await agent.run(Message("user", [turn["message"]], message_id=turn["turn_id"]), session=session)
    if len(response.text) > MAX_TURN_CHARS:
        raise TurnRejected(f"the reply has {len(response.text):,} characters, over the limit of {MAX_TURN_CHARS:,}")
    session_dict = session.to_dict()
    trimmed = trim_to_budget(session_dict, turn["session_budget"])
    return {
        "reply": response.text,
        "session": session_dict,
        "messages": len(session_dict["state"][HISTORY]["messages"]),
        "trimmed": trimmed,
    }


class AgentTurns:
    """The `run_agent_turn` activity, with one chat client and one agent for every turn this process runs.

    A production lesson, measured on this sample: building an OpenAI client costs ~40 ms (an SSL context and a
    connection pool), a turn on a reused one ~3 ms. But activities are synchronous functions on the worker's
    thread pool, and an async client belongs to the event loop it first ran on (and must be closed in it). So
    `AgentTurns` keeps one event loop running in a background thread, runs every turn on it, and on `close()`
    closes the client in that loop and stops it. Close it after `worker.stop()`, which lets running turns finish.
    """

    def __init__(self, model: ModelBackend) -> None:
        self.chat_client = OpenAIChatCompletionClient(**model.client_kwargs())
        # One agent serves every thread, several turns at once: it keeps no conversation state (the history
        # provider keeps the messages in each turn's session), so concurrent turns of different threads don't mix.
        self.agent = Agent(
            client=self.chat_client,
            instructions=INSTRUCTIONS,
            name="Assistant",
            context_providers=[InMemoryHistoryProvider()],
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-turns", daemon=True)
        self._thread.start()

    def run_agent_turn(self, _: task.ActivityContext, turn: dict[str, Any]) -> dict[str, Any]:
        """The activity: run one turn on the shared event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(take_turn(self.agent, turn), self._loop).result()

    def close(self) -> None:
        """Close the chat client inside its event loop, then stop the loop. Safe to call twice."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.chat_client.client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> AgentTurns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# endregion

# region The orchestrator: one instance per thread


def largest_step_bytes(every: int, session_budget: int) -> int:
    """The most one orchestrator step can carry: it replays its generation's whole history.

    That is the generation's input (the session and the recent replies) and, for each of its `every` turns, the
    `user_turn` event (the message), the activity's input (the session and the message) and its result (the
    session and the reply). Messages and replies count as MAX_TURN_CHARS bytes each (mostly ASCII text).
    """
    return session_budget + RECENT_TURNS * MAX_TURN_CHARS + every * (2 * session_budget + 3 * MAX_TURN_CHARS)


def check_size_limits(every: int, session_budget: int) -> None:
    """Refuse a thread whose generation could replay more than the scheduler's message limit in one step."""
    worst_case = largest_step_bytes(every, session_budget)
    if worst_case > SCHEDULER_MESSAGE_LIMIT_BYTES:
        raise SampleError(
            f"continue-as-new every {every} turns with a session budget of {session_budget:,} bytes can put "
            f"{worst_case:,} bytes in one scheduler message, over {SCHEDULER_MESSAGE_LIMIT_BYTES:,}: lower "
            "--every or --session-budget"
        )


def initial_state(every: int, session_budget: int) -> dict[str, Any]:
    """The orchestration's input: everything it knows about the thread, carried across continue-as-new."""
    return {
        "every": every,
        "session_budget": session_budget,
        "generation": 0,
        "turns": 0,
        "session": None,
        "messages": 0,
        "trimmed": 0,
        "duplicates_ignored": 0,
        "turn_ids": [],
        "recent": [],
    }


def thread_status(state: dict[str, Any]) -> dict[str, Any]:
    """The custom status: what the client reads replies and progress from (not the session itself)."""
    last = state["recent"][-1] if state["recent"] else {}
    return {
        "generation": state["generation"],
        "turns": state["turns"],
        "messages": state["messages"],
        "trimmed": state["trimmed"],
        "duplicates_ignored": state["duplicates_ignored"],
        "last_turn_id": last.get("turn_id"),
        "last_reply": last.get("reply"),
        "recent": state["recent"],
    }


def thread_orchestrator(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Generator[task.Task, Any, None]:
    """One generation of a thread: answer `every` user turns, then continue as new with the updated state."""
    # Publish the status first thing: it reads None after continue-as-new until the new generation sets it, and
    # the previous generation left its last reply for this step to publish (see the end of the loop).
    ctx.set_custom_status(thread_status(state))
    answered = 0
    while answered < state["every"]:
        turn = yield ctx.wait_for_external_event(USER_TURN)
        if not (
            isinstance(turn, dict) and isinstance(turn.get("turn_id"), str) and isinstance(turn.get("message"), str)
        ):
            continue  # not raised by OrchestratedThread: ignore it rather than fail the thread
        if turn["turn_id"] in state["turn_ids"]:
            state["duplicates_ignored"] += 1
        else:
            try:
                result = yield ctx.call_activity(
                    "run_agent_turn",
                    input={
                        "thread_id": ctx.instance_id,
                        "session": state["session"],
                        "session_budget": state["session_budget"],
                        "turn_id": turn["turn_id"],
                        "message": turn["message"],
                    },
                )
                outcome = {"turn_id": turn["turn_id"], "reply": result["reply"]}
                state["session"], state["messages"] = result["session"], result["messages"]
                state["trimmed"] += result["trimmed"]
                state["turns"] += 1
            except task.TaskFailedError as error:
                outcome = {"turn_id": turn["turn_id"], "error": error.details.message}
            state["turn_ids"] = [*state["turn_ids"], turn["turn_id"]][-REMEMBERED_TURN_IDS:]
            state["recent"] = [*state["recent"], outcome][-RECENT_TURNS:]
            answered += 1
        # The generation's last reply is not published in the step that continues as new but by the new
        # generation's first step, so the client raises its next turn only once the orchestration waits for it.
        # A turn raised while that first step is in flight can wait up to 100 ms in the embedded scheduler (the
        # benchmark measured those stalls before this change).
        if answered < state["every"]:
            ctx.set_custom_status(thread_status(state))
    # Start over with the state as the new input; save_events=True keeps turns raised during the restart.
    state["generation"] += 1
    ctx.continue_as_new(state, save_events=True)


def new_worker(scheduler: SchedulerBackend, turns: AgentTurns) -> TaskHubGrpcWorker:
    """A worker that runs the thread orchestrator and the agent-turn activity (stop it before closing `turns`)."""
    worker = scheduler.worker()
    worker.add_orchestrator(thread_orchestrator)
    worker.add_activity(turns.run_agent_turn)  # registered as "run_agent_turn", the name the orchestrator calls
    return worker


# endregion

# region The client side: start (or reuse) a thread, raise turns, read replies


class OrchestratedThread:
    """One orchestrated thread as the client sees it: an orchestration instance whose id is the thread id."""

    def __init__(self, client: TaskHubGrpcClient, thread_id: str) -> None:
        self.client = client
        self.thread_id = thread_id

    def start(self, *, every: int = TURNS_PER_GENERATION, session_budget: int = SESSION_BUDGET_BYTES) -> bool:
        """Schedule the thread's orchestration unless it already runs; return True if it was created."""
        check_size_limits(every, session_budget)
        state = self.client.get_orchestration_state(self.thread_id)
        if state is not None and state.runtime_status in ENDED:
            raise SampleError(f"thread {self.thread_id!r} has ended ({state.runtime_status}): choose another --thread")
        if state is not None:
            return False
        try:
            self.client.schedule_new_orchestration(
                thread_orchestrator, input=initial_state(every, session_budget), instance_id=self.thread_id
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # another client created it first: use it
                raise
            return False
        return True

    def status(self) -> dict[str, Any] | None:
        state = self.client.get_orchestration_state(self.thread_id)
        return state.get_custom_status() if state else None

    def raise_turn(self, message: str, turn_id: str | None = None) -> str:
        """Send one user turn; return its id. Sending the same id again is safe: it is answered once."""
        if len(message) > MAX_TURN_CHARS:
            raise SampleError(f"the message has {len(message):,} characters, over the limit of {MAX_TURN_CHARS:,}")
        turn_id = turn_id or f"turn-{uuid.uuid4().hex[:12]}"
        self.client.raise_orchestration_event(self.thread_id, USER_TURN, data={"turn_id": turn_id, "message": message})
        return turn_id

    async def wait_for_reply(self, turn_id: str, timeout: float = REPLY_TIMEOUT_SECONDS) -> tuple[str, dict[str, Any]]:
        """Wait until the custom status carries the outcome of `turn_id`; return the reply and that status."""

        def outcome(status: dict[str, Any] | None) -> dict[str, Any] | None:
            recent = status["recent"] if status else []
            return next((entry for entry in recent if entry["turn_id"] == turn_id), None)

        try:
            status = await wait_for_custom_status(
                self.client,
                self.thread_id,
                lambda status: outcome(status) is not None,
                timeout=timeout,
                poll_interval=REPLY_POLL_SECONDS,
            )
        except StatusTimeout:
            raise StatusTimeout(
                f"no reply to {turn_id} within {timeout:g} s: is a worker running? The turn stays queued in "
                f"thread {self.thread_id!r} and is answered once one runs ({START_WORKER_HINT})"
            ) from None
        entry = outcome(status)
        assert entry is not None
        if "error" in entry:
            raise SampleError(f"{turn_id} failed and was not stored: {entry['error']}")
        return entry["reply"], status

    async def ask(self, message: str, turn_id: str | None = None) -> tuple[str, dict[str, Any]]:
        return await self.wait_for_reply(self.raise_turn(message, turn_id))


# endregion

# region Printing what the reader should see


def describe(status: dict[str, Any]) -> str:
    return (
        f"[thread: turns={status['turns']} messages={status['messages']} trimmed={status['trimmed']} "
        f"generation={status['generation']} duplicates_ignored={status['duplicates_ignored']}]"
    )


async def say(thread: OrchestratedThread, message: str, turn_id: str | None = None) -> str:
    before = thread.status()
    print(f"User: {message}")
    reply, status = await thread.ask(message, turn_id)
    print(f"Agent: {reply}")
    print(f"    {describe(status)}")
    if before and status["generation"] != before["generation"]:
        print(f"    continue-as-new: generation {before['generation']} -> {status['generation']}")
    return reply


# endregion


async def demo(scheduler: SchedulerBackend, model: ModelBackend, every: int, session_budget: int) -> None:
    """`--role all`: a worker and a client in this process, on the scheduler `open_backends` chose."""
    run_id = uuid.uuid4().hex[:8]
    client = scheduler.client()
    turns = AgentTurns(model)  # this process's chat client and agent, for the first worker and its replacement
    worker = new_worker(scheduler, turns)
    worker.start()
    threads = [OrchestratedThread(client, f"thread-{run_id}"), OrchestratedThread(client, f"control-{run_id}")]
    thread, control = threads
    try:
        print(f"\n== 1. Start thread {thread.thread_id}: one orchestration, continue-as-new every {every} turns ==")
        thread.start(every=every, session_budget=session_budget)
        status = await wait_for_custom_status(client, thread.thread_id, lambda status: status is not None, timeout=30)
        print(f"Custom status before the first turn: {describe(status)}")

        print("\n== 2. Turns across a continue-as-new: the session travels in the orchestration's state ==")
        await say(thread, "My name is Alice.")
        await say(thread, "I live in Paris.")
        await say(thread, "My favorite color is blue.")
        await say(thread, "What is my name?")

        print("\n== 3. The same turn id sent twice is answered once ==")
        joke_id = f"joke-{run_id}"
        await say(thread, "Tell me a joke.", turn_id=joke_id)
        thread.raise_turn("Tell me a joke.", turn_id=joke_id)  # what a client retry after a timeout looks like
        status = await wait_for_custom_status(
            client, thread.thread_id, lambda status: bool(status and status["duplicates_ignored"]), timeout=30
        )
        print(f"Raised {joke_id} again: the orchestrator ignored it.\n    {describe(status)}")

        print("\n== 4. Three turns raised back to back, none lost ==")
        questions = ["Where do I live?", "What is my favorite color?", "Summarize our conversation."]
        turn_ids = [thread.raise_turn(question) for question in questions]
        for question, turn_id in zip(questions, turn_ids, strict=True):
            reply, status = await thread.wait_for_reply(turn_id)
            print(f"User: {question}\nAgent: {reply}")
        print(f"    {describe(status)}")

        print("\n== 5. Replace the worker between turns: the thread keeps its memory ==")
        await asyncio.to_thread(worker.stop)
        print("Worker stopped.")
        turn_id = thread.raise_turn("What is my name?")
        print(f"User: What is my name?   (raised as {turn_id} while no worker runs)")
        waiting = thread.status()
        print(f"    queued in the scheduler, not answered: {describe(waiting) if waiting else 'restarting'}")
        worker = new_worker(scheduler, turns)
        worker.start()
        print("A new worker started.")
        reply, status = await thread.wait_for_reply(turn_id)
        print(f"Agent: {reply}\n    {describe(status)}")

        print("\n== 6. Control: a new thread has no history ==")
        control.start(every=every, session_budget=session_budget)
        await say(control, "What is my name?")

        print("\n== 7. What the scheduler holds for the thread ==")
        state = client.get_orchestration_state(thread.thread_id)
        assert state is not None
        status = state.get_custom_status()
        print(f"Runtime status: {state.runtime_status}; custom status:")
        print(json.dumps({key: value for key, value in status.items() if key != "recent"}, indent=4))
    finally:
        for each in threads:
            # A real thread lives on; the demo ends its threads so a shared task hub is left tidy.
            if client.get_orchestration_state(each.thread_id) is not None:
                client.terminate_orchestration(each.thread_id, recursive=False)  # no sub-orchestrations
        await asyncio.to_thread(worker.stop)  # lets a running turn finish...
        turns.close()  # ... before its chat client closes
        client.close()
    print(f"\nEnded the demo threads {thread.thread_id} and {control.thread_id}.")


async def client_role(
    scheduler: SchedulerBackend, thread_id: str, messages: list[str], every: int, session_budget: int
) -> None:
    """`--role client`: continue (or start) one thread on a scheduler where a worker runs."""
    client = scheduler.client()
    thread = OrchestratedThread(client, thread_id)
    try:
        if thread.start(every=every, session_budget=session_budget):
            print(f"Started thread {thread_id}.")
            messages = messages or ["My name is Alice.", "What is my name?"]
        else:
            status = thread.status()
            print(f"Continuing thread {thread_id} {describe(status) if status else '(starting up)'}.")
            messages = messages or ["What is my name?"]
        for message in messages:
            await say(thread, message)
    finally:
        client.close()


async def main(
    role: str = "all",
    thread_id: str = "orchestrated-thread",
    messages: list[str] | None = None,
    every: int = TURNS_PER_GENERATION,
    session_budget: int = SESSION_BUDGET_BYTES,
) -> None:
    if role != "all":
        require_shared_scheduler(role)
    if role != "worker":
        check_size_limits(every, session_budget)  # before anything starts: fail with one line
    # A client process only raises events and reads custom status: the worker's model writes the replies.
    async with open_backends(model=role != "client", scheduler=True) as backends:
        assert backends.scheduler is not None
        if role == "worker":
            with AgentTurns(backends.model) as turns:  # closed after serve_until_stopped has stopped the worker
                await serve_until_stopped(new_worker(backends.scheduler, turns))
        elif role == "client":
            await client_role(backends.scheduler, thread_id, messages or [], every, session_budget)
        else:
            await demo(backends.scheduler, backends.model, every, session_budget)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["all", "worker", "client"], default="all")
    parser.add_argument("--thread", default="orchestrated-thread", help="thread id for --role client")
    parser.add_argument("--say", action="append", default=[], metavar="TEXT", help="a user turn (repeatable)")
    parser.add_argument("--every", type=int, default=TURNS_PER_GENERATION, help="continue-as-new every N turns")
    parser.add_argument("--session-budget", type=int, default=SESSION_BUDGET_BYTES, help="bytes kept in the session")
    arguments = parser.parse_args()
    if arguments.every < 1:
        parser.error("--every must be at least 1")
    return arguments


if __name__ == "__main__":
    arguments = parse_args()
    run_sample(main(arguments.role, arguments.thread, arguments.say, arguments.every, arguments.session_budget))
