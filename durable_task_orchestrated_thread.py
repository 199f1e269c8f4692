"""A conversation thread orchestrated by the Durable Task Scheduler: every user turn is a checkpointed activity.

One orchestration per thread (instance id = thread id) keeps the session; a user turn is a `user_turn` event, the
`run_agent_turn` activity returns only what the turn changed. The framework's compaction keeps the session under a byte
budget (the oldest exchanges become one summary, or whole groups go); what leaves goes to archive pages (entities).
`book_flight` needs a person's approval: an `approval_orchestrator` waits, its timer declines. Plumbing: *_roles.py.

Run it: python durable_task_orchestrated_thread.py [--role all|worker|client] [--timeout SECONDS] [--help]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Generator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

import agent_framework as af
import grpc
from agent_framework import Agent, AgentSession, Content, InMemoryHistoryProvider, Message, tool
from durabletask import entities, task
from durabletask.client import TaskHubGrpcClient

INSTRUCTIONS = "You are a friendly travel assistant. Answer briefly."
USER_TURN = "user_turn"  # the external event that carries a user turn
APPROVAL = "approval"  # the external event that carries a person's answer to a tool call
HISTORY = InMemoryHistoryProvider.DEFAULT_SOURCE_ID  # where the history provider keeps messages in session.state
MAX_TURN_CHARS = 32_000
RECENT_TURNS = 5  # outcomes kept in the custom status, for clients that raised several turns at once
REMEMBERED_TURN_IDS = 100  # a turn whose id is one of the last 100 is not answered again
# A `TokenizerProtocol` counting what a message adds to the session's JSON, a gRPC payload (escaped text, annotations).
SESSION_JSON_BYTES = SimpleNamespace(count_tokens=lambda text: len(json.dumps(text)) + 400)
SCHEDULER_MESSAGE_LIMIT_BYTES = 3 * 1024 * 1024  # headroom under gRPC's 4 MiB; lower it for the managed service
ARCHIVE_PAGE_BYTES = 64_000  # a thread's archive is pages (entities) of about this size...
ARCHIVE_PAGES = 16  # ... and keeps up to 16 of them (~1 MB): past that, the oldest page is forgotten
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # thread and turn ids
COUNTERS = ("generation", "turns", "messages", "summaries", "archived", "ignored")
ENDED = ("COMPLETED", "FAILED", "TERMINATED")
QUEUED = "no worker has taken it yet; it stays queued and is answered once a worker runs"
LOST = "its worker is slow or died mid-turn (DTS then retries it; the embedded scheduler lost it: restart, or use DTS)"


class ThreadError(RuntimeError):
    """A thread cannot do what was asked: a failed turn, an ended or foreign instance, no reply in time."""


class InvalidThreadInput(ValueError):
    """An id, message or size refused before anything is sent, or a turn that does not fit the session budget."""


@tool(approval_mode="always_require")
def book_flight(destination: str) -> str:
    """Book (and pay for) a flight to the destination."""
    booking = f"booking-{uuid.uuid4().hex[:8]}"
    if ledger := os.environ.get("FLIGHT_BOOKINGS_LEDGER"):  # a file every booking is appended to, if set
        with open(ledger, "a", encoding="utf-8") as file:
            file.write(json.dumps({"booking": booking, "destination": destination}) + "\n")
    return f"Booked a flight to {destination}, confirmation {booking}."


async def take_turn(chat_client: Any, work: dict[str, Any]) -> dict[str, Any]:
    """The activity's body: run the agent once on the thread's session and return only what changed."""
    session = AgentSession.from_dict(work["session"]) if work["session"] else AgentSession(session_id=work["thread"])
    before = len(session.state.setdefault(HISTORY, {}).setdefault("messages", []))
    # Compaction after the run: the older half becomes one summary; whole oldest groups go if that is off or not enough.
    summary = af.SummarizationStrategy(client=chat_client, target_count=before // 2 + 1, max_summary_input_tokens=None)
    steps, limit = [summary] if work["summarize"] else [], work["budget"]
    budget = af.TokenBudgetComposedStrategy(token_budget=limit, tokenizer=SESSION_JSON_BYTES, strategies=steps)
    # Providers run after_run in reverse order: the history saves the run first, then compaction sees it.
    providers = [af.CompactionProvider(after_strategy=budget), InMemoryHistoryProvider(skip_excluded=True)]
    agent = Agent(client=chat_client, instructions=INSTRUCTIONS, tools=[book_flight], context_providers=providers)
    # A person's answers to the last run's tool calls (kept out of the history), or a message named by its turn id.
    approvals = [Content.from_dict(r).to_function_approval_response(a) for r, a in work.get("approvals", [])]
    answer = Message("user", approvals) if approvals else None
    message = answer or Message("user", [work["message"]], message_id=work["turn_id"])
    try:
        response = await agent.run(message, session=session)
    except af.exceptions.ChatClientException as error:
        raise ThreadError(f"the model service failed ({error.__cause__ or error.args[0]})") from None
    stored, new = session.state[HISTORY]["messages"], 1 + len(response.messages)  # [summary,] earlier ones, this run's
    out = [bool(m.additional_properties.get(af.EXCLUDED_KEY)) and m is not answer for m in stored]  # the oldest groups
    if any(out[-new:]) or af.included_token_count(stored) > limit or len(response.text) > MAX_TURN_CHARS:
        raise InvalidThreadInput(f"the turn needs more than the session budget of {limit:,} bytes (or a 32K reply)")
    summaries = len(stored) - before - new
    session.state[HISTORY]["messages"] = []  # the session goes back without its history: only the change does
    dropped = [index for index, gone in enumerate(out[summaries:-new]) if gone]  # not always a prefix: a call and
    change = {"reply": response.text, "session": session.to_dict(), "dropped": dropped}  # its late result go together
    change["requests"] = [request.to_dict() for request in response.user_input_requests]
    change["summaries"] = [m.to_dict() for m, gone in zip(stored[:summaries], out, strict=False) if not gone]
    return change | {"added": [m.to_dict() for m in stored[-new:] if m is not answer]}  # the outcome has the answers


def thread_orchestrator(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Generator[task.Task, Any, None]:
    """One generation of a thread: `every` events (a user turn, or a person's answers), then continue as new."""
    ctx.set_custom_status(thread_status(state))  # it reads None after continue-as-new until this step sets it
    for event in range(1, state["every"] + 1):
        decisions = None
        if pending := state["pending"]:  # tool calls wait for a person: one approval orchestration per request
            timeout, requests = state["approval_timeout"], pending["requests"]
            # One per request (OrchestratedThread.answer): a late answer finds it done, its timer ends with it.
            ids = [f"{ctx.instance_id}:approval:{r['id']}" for r in requests]
            waits = [ctx.call_sub_orchestrator(approval_orchestrator, input=timeout, instance_id=i) for i in ids]
            decisions = yield task.when_all(waits)
            approvals = [(r, d["approved"]) for r, d in zip(requests, decisions, strict=True)]
            turn_id, work = pending["turn_id"], {"approvals": approvals}
        else:
            turn = yield ctx.wait_for_external_event(USER_TURN)
            if not isinstance(turn, dict) or turn.get("turn_id") in state["turn_ids"] or "message" not in turn:
                state["ignored"] += 1  # a turn id already answered (a client's retry), or not an OrchestratedThread's
                ctx.set_custom_status(thread_status(state))
                continue
            turn_id, work = str(turn["turn_id"]), {"turn_id": str(turn["turn_id"]), "message": str(turn["message"])}
            state["turn_ids"] = [*state["turn_ids"], turn_id][-REMEMBERED_TURN_IDS:]
        ctx.set_custom_status(thread_status(state, working_on=turn_id))
        state["pending"] = None
        settings = {"thread": ctx.instance_id, "budget": state["session_budget"], "summarize": state["summarize"]}
        try:
            change = yield ctx.call_activity("run_agent_turn", input={**work, **settings, "session": state["session"]})
        except task.TaskFailedError as error:
            state["recent"] = [*state["recent"], {"turn_id": turn_id, "error": error.details.message}][-RECENT_TURNS:]
        else:
            old = state["session"]["state"][HISTORY]["messages"] if state["session"] else []
            if moved := [old[index] for index in change["dropped"]]:
                send_to_archive(ctx, state.setdefault("archive", [[0, 0, 0]]), moved)
            kept = [message for index, message in enumerate(old) if index not in change["dropped"]]
            history = [*change["summaries"], *kept, *change["added"]]
            change["session"]["state"][HISTORY]["messages"] = history
            state.update(session=change["session"], messages=len(history), archived=state["archived"] + len(moved))
            state["summaries"] += len(change["summaries"])
            if change["requests"]:
                state["pending"] = {"turn_id": turn_id, "reply": change["reply"], "requests": change["requests"]}
            else:
                outcome = {"turn_id": turn_id, "reply": change["reply"], "approvals": decisions}
                state.update(turns=state["turns"] + 1, recent=[*state["recent"], outcome][-RECENT_TURNS:])
        if event < state["every"]:  # the last one is published by the next generation, once it waits for events
            ctx.set_custom_status(thread_status(state))
    state["generation"] += 1
    ctx.continue_as_new(state, save_events=True)  # save_events=True keeps turns raised during the restart


def send_to_archive(ctx: task.OrchestrationContext, pages: list[list[int]], moved: list[dict[str, Any]]) -> None:
    """Signal what left the session to the archive's newest page (entity "<thread id>:<n>"): one page per signal."""
    page, size = pages[-1], len(json.dumps(moved))  # pages: [n, messages, bytes] of each kept, oldest first
    if page[2] and page[2] + size > ARCHIVE_PAGE_BYTES:  # the page is full: start the next one
        pages.append(page := [page[0] + 1, 0, 0])
    if len(pages) > ARCHIVE_PAGES:  # forget the oldest page
        ctx.signal_entity(entities.EntityInstanceId("thread_archive", f"{ctx.instance_id}:{pages.pop(0)[0]}"), "delete")
    ctx.signal_entity(entities.EntityInstanceId("thread_archive", f"{ctx.instance_id}:{page[0]}"), "add", input=moved)
    page[1:] = [page[1] + len(moved), page[2] + size]


def approval_orchestrator(ctx: task.OrchestrationContext, timeout: float) -> Generator[task.Task, Any, dict[str, Any]]:
    """One tool call waiting for a person: the first valid `approval` event decides, or the durable timer declines."""
    timer = ctx.create_timer(timedelta(seconds=timeout))
    while True:
        event = ctx.wait_for_external_event(APPROVAL)
        if (yield task.when_any([event, timer])) is timer:
            return {"approved": False, "answer": f"declined: no answer within {timeout:g} s"}
        if isinstance(answer := event.get_result(), dict) and isinstance(answer.get("approved"), bool):
            return {"approved": answer["approved"], "answer": "approved" if answer["approved"] else "declined"}


def thread_status(state: dict[str, Any], working_on: str | None = None) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("session", "turn_ids")} | {"working_on": working_on}


class Reply(NamedTuple):
    text: str  # the agent's reply ("" while it waits for a person)
    approvals: list[dict[str, Any]]  # tool calls waiting for a person (approval requests: "id", "function_call")
    status: dict[str, Any]  # the thread's custom status when the reply was read


class OrchestratedThread:
    """One orchestrated thread as a client sees it: an orchestration instance whose id is the thread id."""

    def __init__(self, client: TaskHubGrpcClient, thread_id: str, reply_timeout: float = 60.0) -> None:
        if not IDENTIFIER.fullmatch(thread_id):
            raise InvalidThreadInput(f"invalid thread id {thread_id[:70]!r}: use 1-64 letters, digits, '.', '_', '-'")
        self.client, self.thread_id, self.reply_timeout, self.answered = client, thread_id, reply_timeout, set[str]()

    def start(
        self, every: int = 3, session_budget: int = 256_000, summarize: bool = True, approval_timeout: float = 300.0
    ) -> bool:
        """Schedule the thread unless it runs (True if created); tool calls are declined after `approval_timeout` s."""
        check_step_size(every, session_budget)
        if (state := self._state()) is not None and state.runtime_status.name in ENDED:
            raise ThreadError(f"thread {self.thread_id!r} has ended ({state.runtime_status.name}): choose another id")
        if state is not None:
            return False
        first = dict(every=every, session_budget=session_budget, summarize=summarize, approval_timeout=approval_timeout)
        first |= dict.fromkeys(COUNTERS, 0) | dict(session=None, pending=None, turn_ids=[], recent=[])
        try:
            self.client.schedule_new_orchestration(thread_orchestrator, input=first, instance_id=self.thread_id)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # another client created it first: use it
                raise
            return False
        return True

    def _state(self) -> Any:
        state = self.client.get_orchestration_state(self.thread_id)
        if state is not None and state.name != thread_orchestrator.__name__:
            raise ThreadError(f"{self.thread_id!r} is a {state.name!r} orchestration, not a thread: choose another id")
        return state

    def status(self) -> dict[str, Any] | None:
        return state.get_custom_status() if (state := self._state()) else None

    def raise_turn(self, message: str, turn_id: str | None = None) -> str:
        """Send one user turn; return its id. Sending the same id again is safe: it is answered once."""
        turn_id = turn_id or f"turn-{uuid.uuid4().hex[:12]}"
        if not IDENTIFIER.fullmatch(turn_id) or len(message) > MAX_TURN_CHARS:
            limits = f"turn ids of 1-64 letters, digits, '.', '_', '-' and at most {MAX_TURN_CHARS:,} characters"
            raise InvalidThreadInput(f"turn {turn_id[:70]!r} of {len(message):,} characters refused: {limits}")
        self.client.raise_orchestration_event(self.thread_id, USER_TURN, data={"turn_id": turn_id, "message": message})
        return turn_id

    def answer(self, request_id: str, approved: bool) -> None:
        """Approve or decline a tool call waiting for a person; only the first answer to a request counts."""
        instance = f"{self.thread_id}:approval:{request_id}"  # the request's own approval orchestration
        if self.client.get_orchestration_state(instance, fetch_payloads=False) is None:
            raise ThreadError(f"thread {self.thread_id!r} has no approval request {request_id!r}")
        self.client.raise_orchestration_event(instance, APPROVAL, data={"approved": approved})
        self.answered.add(request_id)

    async def wait(self, turn_id: str, timeout: float | None = None) -> Reply:
        """Poll the custom status for `turn_id`'s outcome, or its tool calls waiting for a person (5-100 ms backoff)."""
        start, timeout = asyncio.get_running_loop().time(), timeout or self.reply_timeout
        while True:
            state = await asyncio.to_thread(self._state)
            status = (state.get_custom_status() if state else None) or {}
            if done := next((outcome for outcome in status.get("recent", []) if outcome["turn_id"] == turn_id), None):
                if "error" in done:
                    raise ThreadError(f"{turn_id} failed and was not stored: {done['error']}")
                return Reply(done["reply"], [], status)
            pending = status.get("pending") or {"turn_id": None, "requests": []}
            asks = [request for request in pending["requests"] if request["id"] not in self.answered]
            if pending["turn_id"] == turn_id and asks:
                return Reply(pending["reply"], asks, status)
            if state is None or state.runtime_status.name in ENDED:
                raise ThreadError(f"thread {self.thread_id!r} {'does not exist' if state is None else 'has ended'}")
            if (waited := asyncio.get_running_loop().time() - start) > timeout:
                lost = status.get("working_on") == turn_id  # the orchestration handed it to the activity already
                raise ThreadError(f"no reply to {turn_id} within {timeout:g} s: {LOST if lost else QUEUED}")
            await asyncio.sleep(min(max(waited / 10, 0.005), 0.1))

    async def ask(self, message: str, turn_id: str | None = None) -> Reply:
        return await self.wait(self.raise_turn(message, turn_id))


async def main(
    every: int = 3, session_budget: int = 4_500, summarize: bool = True, timeout: float = 60.0
) -> dict[str, Any]:
    """`--role all`: a scheduler (embedded unless configured), a worker and a client here; returns what tests check."""
    from durable_task_orchestrated_thread_roles import Demo, say  # that module imports this one

    async with Demo(every, session_budget, summarize, timeout) as demo:  # checks the settings, starts no worker yet
        thread, control = demo.thread("thread"), demo.thread("control")
        print(f"\n=== 1. Thread {thread.thread_id}: continue-as-new every {every} events, {session_budget:,} B budget")
        facts = ["My name is Alice.", "I live in Paris.", "My favorite color is blue.", "Tell me a joke."]
        first = demo.start_worker(lambda: thread.raise_turn(facts[0]))  # the turn waits in the scheduler till then
        replies = [await say(thread, text, turn_id=first if text == facts[0] else None) for text in facts]
        print("\n=== 2. The oldest exchanges became a summary (in the session), and the agent still knows them ===")
        replies.append(await say(thread, "What is my name?"))
        print("\n=== 3. The same turn id sent twice is answered once; three turns raised at once are all answered ===")
        questions = ["Where do I live?", "What is my favorite color?", "Summarize our conversation."]
        turn_ids = [thread.raise_turn(question) for question in questions]
        thread.raise_turn(questions[0], turn_id=turn_ids[0])  # what a client's retry looks like: the same turn id
        replies += [await say(thread, text, turn_id=turn) for text, turn in zip(questions, turn_ids, strict=True)]
        print("\n=== 4. A tool that needs a person's approval: approved once, declined once ===")
        replies.append(await say(thread, "Book a flight to Paris.", approve=True))
        replies.append(await say(thread, "Book a flight to Rome.", approve=False))
        print("\n=== 5. Control: a new thread knows nothing ===")
        control_reply = await say(control, "What is my name?")
        print("\n=== 6. What the scheduler holds: the thread's custom status and its archive pages ===")
        status, archive = await demo.show(thread)
    return {"replies": replies, "control_reply": control_reply, "status": status, "archive": archive}


def check_step_size(every: int, session_budget: int) -> None:
    if type(every) is not int or type(session_budget) is not int or min(every, session_budget) < 1:  # not bool, float
        raise InvalidThreadInput(f"every ({every!r}) and session_budget ({session_budget!r}) must be integers >= 1")
    # One step replays its generation: the input and, per event, the event and the activity's input and result.
    most = session_budget + RECENT_TURNS * MAX_TURN_CHARS + every * (2 * session_budget + 3 * MAX_TURN_CHARS)
    if most > SCHEDULER_MESSAGE_LIMIT_BYTES:
        raise InvalidThreadInput(
            f"continue-as-new every {every} events with a session budget of {session_budget:,} bytes can put {most:,} "
            f"bytes in one scheduler message, over {SCHEDULER_MESSAGE_LIMIT_BYTES:,}: lower --every or --session-budget"
        )


if __name__ == "__main__":
    from durable_task_orchestrated_thread_roles import command_line

    command_line()
