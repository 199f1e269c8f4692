"""Plumbing for durable_task_orchestrated_thread.py, whose top half is the lesson.

- `AgentTurns` hosts the `run_agent_turn` activity: one chat client and one event loop for all turns of a worker;
  `thread_archive` is the entity that keeps a page of what compaction moved out of a thread (`send_to_archive`);
  `new_worker` registers them and the two orchestrators; `read_archive` reads a thread's pages. These four use only
  the standard library and the framework's packages, like the lesson.
- `command_line()`: `--role all` (the demo, `main()`), `--role worker`, `--role client` (the four durable samples'
  role plumbing, in sample_support.durable_worker), and this script's own arguments.
- `Demo` runs the demo's worker and client in one process; `say` prints `User:` / `Approval:` / `Agent:` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import threading
import time
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
from sample_support.durable_worker import (
    add_role_arguments,
    positive_int,
    positive_seconds,
    require_shared_scheduler,
    serve_until_stopped,
    waiting_notice,
)

SCRIPT = "durable_task_orchestrated_thread.py"
NEW_THREAD_SETTINGS = ("every", "session_budget", "summarize", "approval_timeout")  # OrchestratedThread.start's
MODEL_SETTINGS = "OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL or AZURE_OPENAI_ENDPOINT / AZURE_OPENAI_MODEL"


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


def thread_archive(ctx: entities.EntityContext, messages: list[dict[str, Any]] | None) -> None:
    """Entity, one per page of a thread's archive (keyed "<thread id>:<page>", see `send_to_archive`): "add" appends
    messages compaction moved out of the session, "delete" forgets the page. A summary lists the ids of the messages
    it replaced (`_summary_of_message_ids`): they are in the archive, in order, unless their page was forgotten."""
    ctx.set_state([*ctx.get_state(list, []), *(messages or [])] if ctx.operation == "add" else None)


def new_worker(worker: TaskHubGrpcWorker, turns: AgentTurns) -> TaskHubGrpcWorker:
    """Register what threads need on `worker`: both orchestrators, the archive entity and the agent-turn activity."""
    worker.add_orchestrator(thread_orchestrator)
    worker.add_orchestrator(approval_orchestrator)
    worker.add_entity(thread_archive)
    worker.add_activity(turns.run_agent_turn)  # registered as "run_agent_turn", the name the orchestrator calls
    return worker


def read_archive(client: Any, thread_id: str, status: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """The archive of a thread whose custom status is `status`: the messages of its kept pages in order, and how many
    older ones were forgotten. An entity applies a signal a moment after the orchestration step that sent it, so this
    waits (up to `timeout` s) until every page holds what the status says was sent to it."""
    pages, messages, start = status.get("archive", []), [], time.monotonic()
    for number, count, _ in pages:
        while len(page := read_page(client, f"{thread_id}:{number}")) < count:
            if (waited := time.monotonic() - start) > timeout:
                raise ThreadError(f"the archive of thread {thread_id!r} is behind its status after {timeout:g} s")
            time.sleep(min(max(waited / 10, 0.005), 0.1))
        messages += page
    kept, size = sum(page[1] for page in pages), sum(page[2] for page in pages)
    return {"messages": messages, "pages": len(pages), "bytes": size, "forgotten": status["archived"] - kept}


def read_page(client: Any, key: str) -> list[dict[str, Any]]:
    entity = client.get_entity(entities.EntityInstanceId("thread_archive", key))
    return (entity and entity.get_typed_state(list)) or []


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
        done, _ = await asyncio.wait({waiting}, timeout=2.0)
        if not done and ((await asyncio.to_thread(thread.status)) or {}).get("working_on") != turn_id:
            waiting_notice(SCRIPT)(f"a worker to take {turn_id}")
        return await waiting
    except ThreadError as error:
        if "the model service failed" in str(error):
            raise ThreadError(f"{error}: check the worker's {MODEL_SETTINGS}") from None
        raise


class Demo:
    """`--role all`: the scheduler `open_backends` chose, a worker and a client in this process. Threads it started
    are ended on exit: a real thread lives on, but a shared task hub is left tidy."""

    def __init__(self, every: int, session_budget: int, summarize: bool, timeout: float) -> None:
        check_step_size(every, session_budget)  # before anything starts
        self.settings = {"every": every, "session_budget": session_budget, "summarize": summarize}
        self.timeout = timeout
        self.run, self.threads = uuid.uuid4().hex[:8], list[OrchestratedThread]()
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Demo:
        backends = await self.stack.enter_async_context(open_backends(scheduler=True))
        assert backends.scheduler is not None
        self.scheduler = backends.scheduler
        self.client = self.scheduler.client()
        self.stack.callback(self.client.close)
        self.turns = self.stack.enter_context(AgentTurns(backends.model.client_kwargs()))
        self.worker = new_worker(self.scheduler.worker(), self.turns)  # started by start_worker
        self.stack.push_async_callback(self._end_threads)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stack.aclose()
        print(f"\nEnded the demo threads {', '.join(thread.thread_id for thread in self.threads)}.")

    async def _end_threads(self) -> None:
        for thread in self.threads:  # with their approval orchestrations: the in-memory backend has no recursive
            pending = (thread.status() or {}).get("pending") or {"requests": []}
            approvals = [f"{thread.thread_id}:approval:{request['id']}" for request in pending["requests"]]
            for instance in [thread.thread_id, *approvals]:
                self.client.terminate_orchestration(instance, recursive=False)
        await asyncio.to_thread(self.worker.stop)  # lets a running turn finish, before the chat client closes

    def thread(self, name: str) -> OrchestratedThread:
        thread = OrchestratedThread(self.client, f"{name}-{self.run}", self.timeout)
        thread.start(**self.settings)
        self.threads.append(thread)
        return thread

    def start_worker(self, raise_first: Callable[[], str]) -> str:
        """Raise a turn while no worker runs, then start the worker; return the turn's id. (Stopping a worker to show
        this mid-conversation costs ~1 s: durabletask's stop waits out its work queues' 1 s poll.)"""
        turn_id = raise_first()
        print(f"Raised {turn_id} before any worker runs: it waits in the scheduler. The worker starts.")
        self.worker.start()
        return turn_id

    async def show(self, thread: OrchestratedThread) -> tuple[dict[str, Any], dict[str, Any]]:
        """Print and return the thread's custom status and its archive (once the archive has every moved message)."""
        status = thread.status() or {}
        archive = await asyncio.to_thread(read_archive, self.client, thread.thread_id, status)
        shown = {key: value for key, value in status.items() if key not in ("recent", "pending", "working_on")}
        print(f"Custom status: {json.dumps(shown)}")
        summaries = [m for m in archive["messages"] if str(m.get("message_id", "")).startswith("summary")]
        print(f"Archive: {len(archive['messages'])} messages ({len(summaries)} earlier summaries) in "
              f"{archive['pages']} page(s), {archive['bytes']:,} bytes, {archive['forgotten']} forgotten")  # fmt: skip
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
    if too_long := [len(message) for message in arguments.say if len(message) > MAX_TURN_CHARS]:  # before anything
        raise InvalidThreadInput(f"the message has {too_long[0]:,} characters, over the limit of {MAX_TURN_CHARS:,}")
    async with open_backends(model=False, scheduler=True) as backends:
        assert backends.scheduler is not None
        client = backends.scheduler.client()
        try:
            thread = OrchestratedThread(client, arguments.thread, arguments.timeout)
            if started := thread.start(**settings):
                print(f"Started thread {thread.thread_id}.")
            else:
                print(f"Continuing thread {thread.thread_id} {describe(thread.status() or {})}.")
            if (request_id := arguments.approve or arguments.decline) is not None:  # a tool call waiting for a person
                pending = (thread.status() or {}).get("pending") or {"requests": []}
                if request_id not in [request["id"] for request in pending["requests"]]:
                    raise ThreadError(f"thread {thread.thread_id!r} has no tool call waiting as {request_id!r}")
                thread.answer(request_id, approved := arguments.approve is not None)
                print(f"Approval: {'approved' if approved else 'declined'} {request_id}")
                reply = await wait_saying_so(thread, pending["turn_id"])
                print(f"Agent: {reply.text}\n    {describe(reply.status)}")
            default = ["My name is Alice.", "What is my name?"] if started else ["What is my name?"]
            for message in arguments.say or ([] if request_id else default):
                await say(thread, message)
        finally:
            client.close()


def command_line(argv: list[str] | None = None) -> None:
    """Run the script with these arguments (default: the command line's)."""
    parser = argparse.ArgumentParser(description="A conversation thread orchestrated by the Durable Task Scheduler.")
    add_role_arguments(parser, timeout=60.0, timeout_help="seconds a client waits for each reply")
    parser.add_argument("--thread", default="orchestrated-thread", help="--role client: the thread id")
    parser.add_argument("--say", action="append", default=[], metavar="TEXT", help="--role client: a user turn")
    answers = parser.add_mutually_exclusive_group()
    answers.add_argument("--approve", metavar="REQUEST_ID", help="--role client: approve a waiting tool call")
    answers.add_argument("--decline", metavar="REQUEST_ID", help="--role client: decline a waiting tool call")
    # Settings of a new thread: absent from the result unless given (the demo and the thread have their own defaults).
    new, unset = "for threads started here:", argparse.SUPPRESS
    every = f"{new} continue-as-new every N events (3)"
    parser.add_argument("--every", type=positive_int, default=unset, metavar="N", help=every)
    budget = f"{new} the session's byte budget (256,000; the demo 4,500)"
    parser.add_argument("--session-budget", type=positive_int, default=unset, metavar="BYTES", help=budget)
    summaries = f"{new} drop the oldest exchanges, no summary"
    parser.add_argument("--no-summaries", dest="summarize", action="store_false", default=unset, help=summaries)
    timeout = f"{new} decline a tool call nobody answered in this time (300)"
    parser.add_argument("--approval-timeout", type=positive_seconds, default=unset, metavar="SECONDS", help=timeout)
    arguments = parser.parse_args(argv)
    settings = {name: value for name, value in vars(arguments).items() if name in NEW_THREAD_SETTINGS}
    if arguments.role == "worker":
        role = worker_role()
    elif arguments.role == "client":
        role = client_role(arguments, settings)
    else:
        settings.pop("approval_timeout", None)
        role = main(**settings, timeout=arguments.timeout)
    run_sample(role, errors=(ThreadError, InvalidThreadInput))
