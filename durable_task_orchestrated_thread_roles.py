"""Plumbing for durable_task_orchestrated_thread.py, whose top half is the lesson.

- `AgentTurns` hosts the `run_agent_turn` activity: one chat client and one event loop for all turns of a worker;
  `thread_archive` is the entity that keeps what compaction moved out of a thread; `new_worker` registers them and
  the two orchestrators. These three use only the standard library and the framework's packages, like the lesson.
- `command_line()`: `--role all` (the demo, `main()`), `--role worker`, `--role client`, and their arguments.
- `Demo` runs the demo's worker and client in one process; `say` prints `User:` / `Approval:` / `Agent:` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import entities, task
from durabletask.worker import TaskHubGrpcWorker

from durable_task_orchestrated_thread import (
    MAX_TURN_CHARS,
    InvalidThreadInput,
    OrchestratedThread,
    ThreadError,
    approval_orchestrator,
    check_step_size,
    main,
    take_turn,
    thread_orchestrator,
)
from sample_support import open_backends, run_sample
from sample_support.durable_worker import require_shared_scheduler, serve_until_stopped

ARCHIVE_BUDGET_BYTES = 1_000_000  # the archive entity forgets a thread's oldest messages past this
WORKER_COMMAND = "python durable_task_orchestrated_thread.py --role worker"
MODEL_SETTINGS = "OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL or AZURE_OPENAI_ENDPOINT / AZURE_OPENAI_MODEL"
WAITING_NOTICE_SECONDS = 2.0  # a client says once that it is waiting for a worker after this long


# region What a worker hosts


class AgentTurns:
    """The `run_agent_turn` activity, with one chat client for all turns of this worker process.

    Activities run on the worker's thread pool, and an async client belongs to the event loop it first ran on (and is
    closed there), so every turn runs on one loop in a background thread. `close()` it after `worker.stop()`, which
    lets running turns finish.
    """

    def __init__(self, client_kwargs: dict[str, Any]) -> None:
        self.chat_client = OpenAIChatCompletionClient(**client_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-turns", daemon=True)
        self._thread.start()

    def run_agent_turn(self, _: task.ActivityContext, work: dict[str, Any]) -> dict[str, Any]:
        try:
            return asyncio.run_coroutine_threadsafe(take_turn(self.chat_client, work), self._loop).result()
        except ThreadError as error:  # the model failed: the worker's log says so, not only the client
            logging.getLogger("durable_task_orchestrated_thread").error("thread %s: %s", work["thread"], error)
            raise

    def close(self) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.chat_client.client.close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> AgentTurns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def thread_archive(ctx: entities.EntityContext, messages: list[dict[str, Any]]) -> None:
    """Entity, one per thread: the messages compaction moved out, the oldest forgotten past ARCHIVE_BUDGET_BYTES.

    A summary lists the ids of the messages it replaced (`_summary_of_message_ids`): they are here, in order."""
    archive = ctx.get_state(dict, {"messages": [], "bytes": 0, "forgotten": 0})
    archive["messages"] += messages
    archive["bytes"] += sum(len(json.dumps(message)) for message in messages)
    while archive["bytes"] > ARCHIVE_BUDGET_BYTES:
        archive["bytes"] -= len(json.dumps(archive["messages"].pop(0)))
        archive["forgotten"] += 1
    ctx.set_state(archive)


def new_worker(worker: TaskHubGrpcWorker, turns: AgentTurns) -> TaskHubGrpcWorker:
    """Register what threads need on `worker`: both orchestrators, the archive entity and the agent-turn activity."""
    worker.add_orchestrator(thread_orchestrator)
    worker.add_orchestrator(approval_orchestrator)
    worker.add_entity(thread_archive)
    worker.add_activity(turns.run_agent_turn)  # registered as "run_agent_turn", the name the orchestrator calls
    return worker


def read_archive(client: Any, thread_id: str) -> dict[str, Any]:
    """The thread's archive entity, or an empty archive if compaction has not moved anything out yet."""
    entity = client.get_entity(entities.EntityInstanceId("thread_archive", thread_id))
    return (entity and entity.get_typed_state(dict)) or {"messages": [], "bytes": 0, "forgotten": 0}


# endregion

# region Printing


def describe(status: dict[str, Any]) -> str:
    counters = ("turns", "messages", "summaries", "archived", "generation", "ignored")
    return "[thread: " + " ".join(f"{name}={status[name]}" for name in counters) + "]"


def show_call(request: dict[str, Any]) -> str:
    call = request["function_call"]
    arguments = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
    return f"{call['name']}({arguments})"


async def say(thread: OrchestratedThread, message: str, turn_id: str | None = None, approve: bool | None = None) -> str:
    """Print one user turn (raised here unless `turn_id` was raised already), the tool calls it needs approved (and
    the answer `approve` gives; None leaves them waiting), and the agent's reply. Returns the reply."""
    before = thread.status()
    turn_id = turn_id or thread.raise_turn(message)
    print(f"User: {message}")
    reply = await wait_saying_so(thread, turn_id)
    while reply.approvals:
        for request in reply.approvals:
            print(f"Approval: the agent asks to run {show_call(request)} (request {request['id']})")
            if approve is None:
                print(f"Approval: waiting; answer with --approve {request['id']} or --decline {request['id']}")
                return reply.text
            thread.answer(request["id"], approve)
            print(f"Approval: {'approved' if approve else 'declined'}")
        reply = await wait_saying_so(thread, turn_id)
    print(f"Agent: {reply.text}\n    {describe(reply.status)}")
    if before and reply.status["generation"] != before["generation"]:
        print(f"    continue-as-new: generation {before['generation']} -> {reply.status['generation']}")
    return reply.text


async def wait_saying_so(thread: OrchestratedThread, turn_id: str) -> Any:
    """`thread.wait(turn_id)`, saying once if no worker has taken the turn after a moment; names the model's settings
    when the turn failed because of the model."""
    waiting = asyncio.ensure_future(thread.wait(turn_id))
    try:
        done, _ = await asyncio.wait({waiting}, timeout=WAITING_NOTICE_SECONDS)
        if not done and ((await asyncio.to_thread(thread.status)) or {}).get("working_on") != turn_id:
            print(f"Waiting for a worker to take {turn_id} (start one: {WORKER_COMMAND}) ...", flush=True)
        return await waiting
    except ThreadError as error:
        if "the model service failed" in str(error):
            raise ThreadError(f"{error}: check the worker's {MODEL_SETTINGS}") from None
        raise


# endregion

# region The demo's worker and client, and the two roles


class Demo:
    """`--role all`: the scheduler `open_backends` chose, a worker and a client in this process. Threads it started
    are ended on exit: a real thread lives on, but a shared task hub is left tidy."""

    def __init__(self, every: int, session_budget: int, summarize: bool) -> None:
        check_step_size(every, session_budget)  # before anything starts
        self.settings = {"every": every, "session_budget": session_budget, "summarize": summarize}
        self.run, self.threads = uuid.uuid4().hex[:8], list[OrchestratedThread]()
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Demo:
        backends = await self.stack.enter_async_context(open_backends(scheduler=True))
        assert backends.scheduler is not None
        self.scheduler = backends.scheduler
        self.client = self.scheduler.client()
        self.stack.callback(self.client.close)
        self.turns = self.stack.enter_context(AgentTurns(backends.model.client_kwargs()))
        self.stack.push_async_callback(self._end_threads)
        self.start_worker()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stack.aclose()
        print(f"\nEnded the demo threads {', '.join(thread.thread_id for thread in self.threads)}.")

    async def _end_threads(self) -> None:
        for thread in self.threads:
            pending = (thread.status() or {}).get("pending") or {"requests": []}
            for instance in [
                thread.thread_id,
                *(f"{thread.thread_id}:approval:{r['id']}" for r in pending["requests"]),
            ]:
                self.client.terminate_orchestration(instance, recursive=False)  # the in-memory backend has no recursive
        await self.stop_worker()  # lets a running turn finish, before the chat client closes

    def thread(self, name: str) -> OrchestratedThread:
        thread = OrchestratedThread(self.client, f"{name}-{self.run}")
        thread.start(**self.settings)
        self.threads.append(thread)
        return thread

    def start_worker(self) -> None:
        self.worker = new_worker(self.scheduler.worker(), self.turns)
        self.worker.start()

    async def stop_worker(self) -> None:
        await asyncio.to_thread(self.worker.stop)

    async def replace_worker(self, raise_turn: Callable[[], str]) -> str:
        """Stop the worker, raise a turn while none runs, start a new worker; return the turn's id."""
        await self.stop_worker()
        turn_id = raise_turn()
        print(f"Worker stopped. Raised {turn_id} while no worker runs: it waits in the scheduler. A new worker starts.")
        self.start_worker()
        return turn_id

    async def show(self, thread: OrchestratedThread) -> tuple[dict[str, Any], dict[str, Any]]:
        """Print and return the thread's custom status and its archive (once the archive has every moved message)."""
        status = thread.status() or {}
        for _ in range(200):  # the archive entity applies its signals a moment after the orchestration sends them
            archive = await asyncio.to_thread(read_archive, self.client, thread.thread_id)
            if len(archive["messages"]) + archive["forgotten"] >= status["archived"]:
                break
            await asyncio.sleep(0.05)
        shown = {key: value for key, value in status.items() if key not in ("recent", "pending", "working_on")}
        print(f"Custom status: {json.dumps(shown)}")
        summaries = [m for m in archive["messages"] if str(m.get("message_id", "")).startswith("summary")]
        print(f"Archive entity: {len(archive['messages'])} messages ({len(summaries)} earlier summaries), "
              f"{archive['bytes']:,} bytes, {archive['forgotten']} forgotten")  # fmt: skip
        return status, archive


async def worker_role() -> None:
    """`--role worker`: host threads on the scheduler at DTS_ENDPOINT until Ctrl+C / SIGTERM."""
    require_shared_scheduler("worker")
    async with open_backends(scheduler=True) as backends:
        assert backends.scheduler is not None
        with AgentTurns(backends.model.client_kwargs()) as turns:  # closed once the worker has stopped
            await serve_until_stopped(new_worker(backends.scheduler.worker(), turns))


async def client_role(arguments: argparse.Namespace, settings: dict[str, Any]) -> None:
    """`--role client`: start or continue one thread on DTS_ENDPOINT's scheduler, where a worker runs."""
    require_shared_scheduler("client")
    for message in arguments.say:  # refused before the thread is created
        if len(message) > MAX_TURN_CHARS:
            raise InvalidThreadInput(
                f"the message has {len(message):,} characters, over the limit of {MAX_TURN_CHARS:,}"
            )
    async with open_backends(model=False, scheduler=True) as backends:
        assert backends.scheduler is not None
        client = backends.scheduler.client()
        try:
            thread = OrchestratedThread(client, arguments.thread)
            if started := thread.start(**settings):
                print(f"Started thread {thread.thread_id}.")
            else:
                print(f"Continuing thread {thread.thread_id} {describe(thread.status() or {})}.")
            if (request_id := arguments.approve or arguments.decline) is not None:
                await answer_waiting_request(thread, request_id, approve=arguments.approve is not None)
            default = ["My name is Alice.", "What is my name?"] if started else ["What is my name?"]
            for message in arguments.say or ([] if request_id else default):
                await say(thread, message)
        finally:
            client.close()


async def answer_waiting_request(thread: OrchestratedThread, request_id: str, approve: bool) -> None:
    pending = (thread.status() or {}).get("pending") or {}
    if request_id not in [request["id"] for request in pending.get("requests", [])]:
        raise ThreadError(f"thread {thread.thread_id!r} has no tool call waiting for request {request_id!r}")
    thread.answer(request_id, approve)
    print(f"Approval: {'approved' if approve else 'declined'} {request_id}")
    reply = await wait_saying_so(thread, pending["turn_id"])
    print(f"Agent: {reply.text}\n    {describe(reply.status)}")


# endregion


def at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A conversation thread orchestrated by the Durable Task Scheduler.")
    roles = "all: scheduler, worker and client in this process (default); worker / client: separate processes"
    parser.add_argument("--role", choices=["all", "worker", "client"], default="all", help=roles)
    parser.add_argument("--thread", default="orchestrated-thread", help="--role client: the thread id")
    parser.add_argument("--say", action="append", default=[], metavar="TEXT", help="--role client: a user turn")
    answers = parser.add_mutually_exclusive_group()
    answers.add_argument("--approve", metavar="REQUEST_ID", help="--role client: approve a waiting tool call")
    answers.add_argument("--decline", metavar="REQUEST_ID", help="--role client: decline a waiting tool call")
    new = "for threads started here:"
    parser.add_argument("--every", type=at_least_one, metavar="N", help=f"{new} continue-as-new every N events (3)")
    budget = f"{new} the session's byte budget (256,000; the demo 4,500)"
    parser.add_argument("--session-budget", type=at_least_one, metavar="BYTES", help=budget)
    parser.add_argument("--no-summaries", action="store_true", help=f"{new} drop the oldest exchanges, no summary")
    timeout = f"{new} decline a tool call nobody answered in this time (300)"
    parser.add_argument("--approval-timeout", type=seconds, metavar="SECONDS", help=timeout)
    return parser.parse_args(argv)


def command_line(argv: list[str] | None = None) -> None:
    """Run the script with these arguments (default: the command line's)."""
    arguments = parse_args(argv)
    given = {
        "every": arguments.every,
        "session_budget": arguments.session_budget,
        "summarize": False if arguments.no_summaries else None,
        "approval_timeout": arguments.approval_timeout,
    }
    settings = {name: value for name, value in given.items() if value is not None}
    if arguments.role == "worker":
        run_sample(worker_role(), errors=(ThreadError, InvalidThreadInput))
    elif arguments.role == "client":
        run_sample(client_role(arguments, settings), errors=(ThreadError, InvalidThreadInput))
    else:
        settings.pop("approval_timeout", None)
        run_sample(main(**settings), errors=(ThreadError, InvalidThreadInput))
