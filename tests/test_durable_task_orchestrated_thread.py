"""durable_task_orchestrated_thread.py: one orchestration per thread, turns as events, the agent in an activity that
returns only what a turn changed; the framework's compaction (summaries, or whole oldest groups) under a byte budget
with an archive in pages (entities); a tool that waits for a person's approval across worker restarts; one-line errors.

The scheduler is the embedded one over real gRPC (or DTS_ENDPOINT with --use-env). Worker processes started here send
their model requests to this process's offline model (directly, or through a gate that holds a request until the
test releases it), so the no-rejection check covers them too, and they die with the test run.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from durabletask.client import TaskHubGrpcClient

import durable_task_orchestrated_thread as sample
import durable_task_orchestrated_thread_roles as roles
from sample_support import SchedulerBackend, run_sample, select_model
from sample_support.offline_model import OFFLINE_MODEL_NAME, OfflineModelServer
from tests.conftest import REPO_DIR, ScriptRunner, expected_banner, using_real_services
from tests.local_servers import free_loopback_port, start_child, stop_child
from tests.standalone import EMBEDDED_SCHEDULER, run_standalone, standalone_source

SCRIPT, ROLES = "durable_task_orchestrated_thread.py", "durable_task_orchestrated_thread_roles.py"
ERRORS = (sample.ThreadError, sample.InvalidThreadInput)
DECLINED, BOOK = "I did not book the flight to Paris: the request was declined.", "Book a flight to Paris."


def new_thread(client: TaskHubGrpcClient, **options: Any) -> sample.OrchestratedThread:
    thread = sample.OrchestratedThread(client, f"test-{uuid.uuid4().hex[:10]}")
    assert thread.start(**options) is True
    return thread


def generation_input(thread: sample.OrchestratedThread) -> dict[str, Any]:
    """The state the current generation started with (continue-as-new carried it in as the input)."""
    state = thread.client.get_orchestration_state(thread.thread_id)
    assert state is not None
    return json.loads(state.serialized_input or "null")


def session_messages(thread: sample.OrchestratedThread) -> list[dict[str, Any]]:
    return generation_input(thread)["session"]["state"]["in_memory"]["messages"]


def orphans(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results (or a person's approval answers) whose call is not in the messages before them."""
    asked: set[str] = set()
    found = []
    for content in (content for message in messages for content in message["contents"]):
        if content["type"] in ("function_call", "function_approval_request"):
            asked.add(content["call_id"] if content["type"] == "function_call" else content["id"])
        elif content["type"] in ("function_result", "function_approval_response"):
            found += (
                []
                if (content["call_id"] if content["type"] == "function_result" else content["id"]) in asked
                else [content]
            )
    return found


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [" ".join(str(c.get("text", c.get("result", ""))) for c in m["contents"]).strip() for m in messages]


async def wait_for_status(thread: sample.OrchestratedThread, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(600):
        if (status := thread.status()) and done(status):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"the status never got there: {thread.status()}")


@pytest.fixture(scope="class")
def in_process_worker(scheduler: SchedulerBackend) -> Iterator[roles.AgentTurns]:
    with roles.AgentTurns(select_model().client_kwargs()) as turns:
        worker = roles.new_worker(scheduler.worker(), turns)
        worker.start()
        yield turns
        worker.stop()


@pytest.fixture
def bookings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, str]]]:
    """Every flight `book_flight` booked during the test, in this process or a worker process it started."""
    ledger = tmp_path / "bookings.jsonl"
    monkeypatch.setenv("FLIGHT_BOOKINGS_LEDGER", str(ledger))
    return lambda: [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


# region Worker processes and a model gate


class WorkerProcess:
    """`python durable_task_orchestrated_thread.py --role worker`, on the test's scheduler and a model URL."""

    def __init__(self, model_url: str, **env: str) -> None:
        environment = {**os.environ, "OPENAI_API_KEY": "offline", "OPENAI_MODEL": OFFLINE_MODEL_NAME, **env}
        environment["OPENAI_BASE_URL"] = model_url
        self.process = start_child(
            [sys.executable, SCRIPT, "--role", "worker"],
            cwd=REPO_DIR,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.errors.append), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        self.wait_for_line("Worker ready")

    @staticmethod
    def _read(stream: Any, keep: Callable[[str], None]) -> None:
        for line in stream:
            keep(line)

    def wait_for_line(self, start: str) -> None:
        while not self.lines.get(timeout=30).startswith(start):
            continue

    def finish(self, signal_number: int | None = signal.SIGTERM) -> tuple[int, str]:
        """Send the signal (None: it was sent already), wait for the process to end; return its status and stderr."""
        if signal_number is not None:
            self.process.send_signal(signal_number)
        status = self.process.wait(timeout=30)
        for reader in self.readers:  # the pipes reach their end once the process is gone
            reader.join(timeout=10)
        stop_child(self.process)
        return status, "".join(self.errors)


@pytest.fixture
def workers(scheduler_endpoint: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts worker processes on the test's scheduler; whatever still runs at the end is killed."""
    started: list[WorkerProcess] = []

    def start(model_url: str, **env: str) -> WorkerProcess:
        started.append(WorkerProcess(model_url, **env))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.finish(signal.SIGKILL)


class ModelGate:
    """An HTTP relay to the offline model that holds every request until `release()`; counts what it saw."""

    def __init__(self, target: str) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        self.requests = 0
        gate = self

        class Relay(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gate.requests += 1
                gate.arrived.set()
                gate.released.wait(timeout=60)
                forwarded = urllib.request.Request(
                    target + self.path.removeprefix("/v1"), data=body, headers={"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(forwarded, timeout=30) as answer:
                        payload = answer.read()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client went away (its worker was killed)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate(offline_model: OfflineModelServer) -> Iterator[ModelGate]:
    model_gate = ModelGate(offline_model.base_url)
    yield model_gate
    model_gate.close()


# endregion

# region The demo and the script


@pytest.mark.timeout(60)
def test_main_demo_recalls_through_a_summary_books_once_and_archives_what_left(
    capsys: pytest.CaptureFixture[str], bookings: Callable[[], list[dict[str, str]]]
) -> None:
    result = asyncio.run(sample.main())
    out, err = capsys.readouterr()
    assert err == ""
    replies, status, archive = result["replies"], result["status"], result["archive"]
    assert replies[0] == "Nice to meet you, Alice!"  # raised before any worker ran, answered once one started
    assert "before any worker runs: it waits in the scheduler" in out
    assert replies[4] == "Your name is Alice."  # asked after the first summary replaced the oldest exchanges
    assert replies[5:8] == ["You live in Paris.", "Your favorite color is blue.", replies[7]]
    assert replies[8].startswith("Booked a flight to Paris") and replies[9] == DECLINED.replace("Paris", "Rome")
    assert [booking["destination"] for booking in bookings()] == ["Paris"]  # approved once, declined once
    assert "Alice" not in result["control_reply"]
    # 10 turns answered; the duplicate ignored; nothing lost: every message left is in the archive (one page, whole),
    # which the reader saw only once it held what the status says was sent to it.
    assert (status["turns"], status["ignored"]) == (10, 1)
    assert status["summaries"] >= 1 and status["archived"] == len(archive["messages"]) > 0
    assert (archive["pages"], archive["forgotten"]) == (1, 0) and status["archive"][0][1] == status["archived"]
    assert archive["messages"][0]["contents"][0]["text"] == "My name is Alice."  # the oldest message, kept in order
    assert "Approval: the agent asks to run book_flight" in out and "Approval: declined" in out
    assert "continue-as-new: generation 0 -> 1" in out and "in 1 page(s)" in out


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would_without_leaking(run_script: ScriptRunner) -> None:
    result = run_script("-W", "error::ResourceWarning", SCRIPT)  # -X dev also works, 4x slower (asyncio debug)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr and "Traceback" not in result.stderr
    banner = result.stdout.splitlines()[0]
    assert all(part in banner for part in expected_banner(scheduler=True))
    assert "Agent: Your name is Alice." in result.stdout
    assert "Agent: I did not book the flight to Rome: the request was declined." in result.stdout
    assert "Archive: " in result.stdout and result.stdout.rstrip().endswith(".")


def test_help_runs_nothing_and_an_unknown_flag_is_refused(run_script_here: ScriptRunner) -> None:
    helped = run_script_here(SCRIPT, "--help")
    assert helped.returncode == 0 and "--role {all,worker,client}" in helped.stdout
    assert "--timeout SECONDS" in helped.stdout and "seconds a client waits for each reply (60)" in helped.stdout
    assert "Backends:" not in helped.stdout
    refused = run_script_here(SCRIPT, "--bogus")
    assert refused.returncode == 2 and "unrecognized arguments: --bogus" in refused.stderr


# endregion

# region Turns, duplicates, generations


class RecordingContext:
    """Just enough of an orchestration context to step `thread_orchestrator` by hand and record what it did."""

    instance_id = "thread-recorded"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_custom_status(self, status: dict[str, Any]) -> None:
        last = status["recent"][-1]["turn_id"] if status["recent"] else None
        self.calls.append(("status", status["working_on"] or last))

    def wait_for_external_event(self, name: str) -> str:
        self.calls.append(("wait", name))
        return "wait"

    def call_activity(self, name: str, *, input: dict[str, Any]) -> str:
        self.calls.append(("activity", input["turn_id"]))
        return "activity"

    def continue_as_new(self, state: dict[str, Any], *, save_events: bool) -> None:
        self.calls.append(("continue_as_new", (state["generation"], save_events)))


def run_generation(state: dict[str, Any], turn_ids: list[str]) -> list[tuple[str, Any]]:
    """Drive one generation of the orchestrator: each turn's event, then its activity's result (one new exchange)."""
    ctx = RecordingContext()
    steps = sample.thread_orchestrator(ctx, state)  # type: ignore[arg-type]
    assert next(steps) == "wait"
    with pytest.raises(StopIteration):
        for turn_id in turn_ids:
            assert steps.send({"turn_id": turn_id, "message": "Hello!"}) == "activity"
            session = {"type": "session", "state": {"in_memory": {"messages": []}}}
            added = [{"role": "user", "contents": []}, {"role": "assistant", "contents": []}]
            change = {"reply": f"reply to {turn_id}", "session": session, "requests": []}
            assert steps.send(change | {"dropped": [], "summaries": [], "added": added}) == "wait"
    return ctx.calls


def test_the_last_reply_of_a_generation_is_published_by_the_next_one() -> None:
    state = generation_input_for(every=2)
    first = run_generation(state, ["t1", "t2"])
    # No status in the step that continues as new: a client would raise its next turn while the new
    # generation's first step is in flight, and the embedded scheduler holds such an event up to 100 ms.
    assert first == [
        ("status", None),
        ("wait", sample.USER_TURN),
        ("status", "t1"),  # working on t1: published with the activity's scheduling
        ("activity", "t1"),
        ("status", "t1"),
        ("wait", sample.USER_TURN),
        ("status", "t2"),
        ("activity", "t2"),
        ("continue_as_new", (1, True)),
    ]
    second = run_generation(state, ["t3", "t4"])  # continue_as_new carried `state` over
    assert second[0] == ("status", "t2")  # the new generation publishes t2's reply first thing
    assert [outcome["turn_id"] for outcome in state["recent"][-2:]] == ["t3", "t4"]
    assert state["messages"] == 8 and state["turns"] == 4  # each run's change appended to the kept session


def generation_input_for(**options: Any) -> dict[str, Any]:
    """The input `OrchestratedThread.start` schedules, captured from a stand-in client."""
    captured: dict[str, Any] = {}

    class Client:
        def get_orchestration_state(self, _: str) -> None:
            return None

        def schedule_new_orchestration(self, _: Any, *, input: dict[str, Any], instance_id: str) -> str:
            captured.update(input)
            return instance_id

    sample.OrchestratedThread(Client(), "captured").start(**options)  # type: ignore[arg-type]
    return captured


# endregion

# region Compaction: the session under its byte budget, summaries, the archive, the change a turn sends back


def test_the_byte_tokenizer_bounds_the_session_json_of_every_kind_of_message() -> None:
    """The budget counts the framework's serialization of each message plus a fixed overhead: that must not be less
    than what the message really adds to the session's JSON (escaped unicode, tool calls, approvals, long ids)."""
    from agent_framework import Content, Message
    from agent_framework._compaction import _serialize_message, annotate_message_groups

    call = Content.from_function_call(call_id="call_" + "c" * 24, name="book_flight", arguments={"destination": "P"})
    messages = [
        Message("user", ["é日本😀 " * 30], message_id="t" * 64),
        Message("assistant", [call], author_name="Assistant"),
        Message("tool", [Content.from_function_result(call_id="call_" + "c" * 24, result="Booked.")]),
        Message("assistant", [Content.from_text('quote " \\ done')], author_name="Assistant"),
    ]
    annotate_message_groups(messages, tokenizer=sample.SESSION_JSON_BYTES)
    for message in messages:
        real = len(json.dumps(message.to_dict()))
        assert sample.SESSION_JSON_BYTES.count_tokens(_serialize_message(message)) >= real, message.role


# endregion


@pytest.mark.usefixtures("in_process_worker")
class TestOnAnInProcessWorker:
    """Turns, compaction and approvals on one in-process worker for the whole class (a worker stops in ~1 s)."""

    @pytest.mark.timeout(60)
    def test_ten_turns_back_to_back_events_and_a_duplicate(self, client: TaskHubGrpcClient) -> None:
        thread, control = new_thread(client, every=3), new_thread(client, every=3)
        facts = ["My name is Alice.", "I live in Paris.", "My favorite color is blue."]
        questions = {"What is my name?": "Alice", "Where do I live?": "Paris", "What is my favorite color?": "blue"}

        async def scenario() -> tuple[list[str], list[str], dict[str, Any], str]:
            turn_ids, replies = [], []
            for fact in facts:  # turns 1-3: the third ends generation 0
                turn_ids.append(thread.raise_turn(fact))
                replies.append((await thread.wait(turn_ids[-1])).text)
            # Turns 4-7 raised at once (a continue-as-new happens with turns waiting), and turn 4 raised again.
            batch = [*questions, "Summarize our conversation."]
            turn_ids += [thread.raise_turn(text) for text in batch]
            thread.raise_turn(batch[0], turn_id=turn_ids[3])
            # A lost event shows up as a timeout here, well before the test's own timeout.
            replies += [(await thread.wait(turn_id, timeout=20)).text for turn_id in turn_ids[3:]]
            for text in questions:  # turns 8-10
                turn_ids.append(thread.raise_turn(text))
                replies.append((await thread.wait(turn_ids[-1])).text)
            status = await wait_for_status(thread, lambda status: status["ignored"] == 1)
            return turn_ids, replies, status, (await control.ask("What is my name?")).text

        turn_ids, replies, status, control_reply = asyncio.run(scenario())
        for question, reply in zip([*questions, *questions], [*replies[3:6], *replies[7:]], strict=True):
            assert questions[question] in reply, (question, reply)
        assert all(fact in replies[6] for fact in ("Alice", "Paris", "blue"))  # the summary turn saw all of them
        assert "Alice" not in control_reply
        # 11 events (10 turns and the duplicate) in generations of 3: the fourth generation runs.
        assert {key: status[key] for key in ("turns", "messages", "generation", "ignored")} == {
            "turns": 10,
            "messages": 20,
            "generation": 3,
            "ignored": 1,
        }
        # Generation 3 started after 9 events: 8 turns (and the duplicate), each user message once, in order.
        stored = session_messages(thread)
        assert [message["message_id"] for message in stored if message["role"] == "user"] == turn_ids[:8]
        assert len(stored) == 16

    @pytest.mark.timeout(60)
    def test_session_budget_drops_whole_oldest_groups_archives_them_and_rejects_an_oversize_turn(
        self, client: TaskHubGrpcClient
    ) -> None:
        budget = 3_000  # about five short messages
        thread = new_thread(client, every=2, session_budget=budget, summarize=False)

        async def scenario() -> list[str]:
            said = ["My name is Alice.", "I live in Paris.", "Hello!"]
            replies = [(await thread.ask(text)).text for text in said]
            with pytest.raises(sample.InvalidThreadInput, match="refused"):
                thread.raise_turn("y" * 40_000)
            with pytest.raises(sample.ThreadError, match=f"was not stored: .* the session budget of {budget:,} bytes"):
                await thread.ask("Please remember this: " + "x" * 3_000)
            replies.append((await thread.ask("Where do I live?")).text)
            replies.append((await thread.ask("What is my name?")).text)
            await wait_for_status(thread, lambda status: status["generation"] >= 3)
            return replies

        replies = asyncio.run(scenario())
        status = thread.status()
        assert status is not None and status["turns"] == 5 and status["summaries"] == 0
        assert "Paris" in replies[3]  # a recent exchange survived the trimming
        assert "Alice" not in replies[4]  # the oldest exchange was dropped, as the status says
        archive = roles.read_archive(client, thread.thread_id, status)
        # Nothing vanished: every message of the five stored turns is in the session or, in order, in the archive.
        assert status["messages"] + status["archived"] == 2 * 5
        assert texts(archive["messages"])[:2] == ["My name is Alice.", "Nice to meet you, Alice!"]
        stored = session_messages(thread)
        assert (
            len(json.dumps(stored)) <= budget
        )  # the framework's count with our per-message overhead is an upper bound
        assert orphans(stored) == []  # whole groups: never a tool result without its call

    @pytest.mark.timeout(60)
    def test_the_archive_keeps_its_newest_pages_and_forgets_the_oldest(
        self, client: TaskHubGrpcClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pages of one batch each (a 1-byte page size) and two of them kept: the reader gets the newest two batches
        in order; the older ones are forgotten, counted, and their page entities deleted."""
        monkeypatch.setattr(sample, "ARCHIVE_PAGE_BYTES", 1)
        monkeypatch.setattr(sample, "ARCHIVE_PAGES", 2)
        thread = new_thread(client, every=2, session_budget=3_000, summarize=False)
        said = ["My name is Alice.", "I live in Paris.", "Hello!", "Tell me a joke.", "What can you do?", "Hello!"]

        async def scenario() -> list[str]:
            return [(await thread.ask(text)).text for text in said]

        try:
            replies = asyncio.run(scenario())
            status = thread.status()
            assert status is not None
            archive = roles.read_archive(client, thread.thread_id, status)
        finally:  # before the page settings go back: a later step would replay with them
            client.terminate_orchestration(thread.thread_id, recursive=False)
        conversation = [text for exchange in zip(said, replies, strict=True) for text in exchange]
        assert status["messages"] + status["archived"] == len(conversation)  # nothing vanished unaccounted
        forgotten, numbers = archive["forgotten"], [number for number, _, _ in status["archive"]]
        assert forgotten > 0 and len(numbers) == archive["pages"] == 2 and numbers[1] == numbers[0] + 1 > 1
        assert texts(archive["messages"]) == conversation[forgotten : status["archived"]]  # the newest, in order
        assert roles.read_page(client, f"{thread.thread_id}:0") == []  # the oldest page's entity was deleted

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("summarize", [True, False], ids=["with summaries", "without: the control"])
    def test_a_summary_carries_a_fact_across_200_turns_and_without_summaries_it_is_forgotten(
        self, client: TaskHubGrpcClient, bookings: Callable[[], list[dict[str, str]]], summarize: bool
    ) -> None:
        """Turn 1 tells a fact; 200 turns follow (with tool-calling, approved turns in the summarized window) under a
        budget of about 100 messages, across continue-as-new. With summaries the fact survives in the session;
        without, it is forgotten (the negative control, the same run otherwise: two items, so two test processes
        run them at once); every message that left is in the archive's pages, in order. The strict offline endpoint
        answers no 400 (autouse check)."""
        budget = 60_000
        thread = new_thread(client, every=3, session_budget=budget, summarize=summarize)
        filler = ["Tell me a joke.", "Hello!", "What can you do?", "Hello!", "Tell me a joke.", *["Hello!"] * 14]
        filler.append("Book a flight to Paris.")  # every 20th turn calls a tool (its call and result summarized later)

        async def conversation() -> sample.Reply:
            await thread.ask("My name is Alice.")
            for number in range(200):
                reply = await thread.ask(filler[number % len(filler)])
                for request in reply.approvals:
                    thread.answer(request["id"], True)
                if reply.approvals:
                    await thread.wait(reply.status["pending"]["turn_id"])
            return await thread.ask("What is my name?")

        final = asyncio.run(conversation())
        status, kept = final.status, session_messages(thread)
        assert len(bookings()) == 10  # every approved booking ran once
        assert status["generation"] >= 20 and orphans(kept) == []
        archive = roles.read_archive(client, thread.thread_id, status)
        assert len(archive["messages"]) == status["archived"] and archive["forgotten"] == 0
        assert texts(archive["messages"][:2]) == ["My name is Alice.", "Nice to meet you, Alice!"]
        if summarize:
            assert final.text == "Your name is Alice." and status["summaries"] >= 2  # summaries of summaries
            # A summary also lists the ids it replaced: a little over the budget.
            assert 20 <= len(kept) <= 110 and len(json.dumps(kept)) < budget + 5_000
        else:
            assert "Alice" not in final.text and status["summaries"] == 0 and status["archived"] > 100
            # Pages of ~64 KB: a signal loads one page, not the whole archive (a page holds more only with one batch).
            assert archive["pages"] > 1 and all(size < 2 * sample.ARCHIVE_PAGE_BYTES for *_, size in status["archive"])

    @pytest.mark.timeout(60)
    def test_a_declined_tool_call_never_runs_and_the_agent_says_so(
        self,
        client: TaskHubGrpcClient,
        bookings: Callable[[], list[dict[str, str]]],
    ) -> None:
        thread = new_thread(client)

        async def scenario() -> sample.Reply:
            pending = await thread.ask("Book a flight to Paris.")
            thread.answer(pending.approvals[0]["id"], False)
            return await thread.wait(pending.status["pending"]["turn_id"])

        reply = asyncio.run(scenario())
        assert reply.text == DECLINED and bookings() == []
        assert reply.status["recent"][-1]["approvals"] == [{"approved": False, "answer": "declined"}]

    @pytest.mark.timeout(60)
    def test_an_unanswered_tool_call_is_declined_by_the_durable_timer(
        self,
        client: TaskHubGrpcClient,
        bookings: Callable[[], list[dict[str, str]]],
    ) -> None:
        thread = new_thread(client, approval_timeout=1.5)

        async def scenario() -> dict[str, Any]:
            pending = await thread.ask("Book a flight to Paris.")
            assert pending.approvals and bookings() == []
            turn_id = pending.status["pending"]["turn_id"]  # nobody answers: wait for the turn's outcome
            status = await wait_for_status(
                thread, lambda status: status["recent"][-1:] and status["recent"][-1]["turn_id"] == turn_id
            )
            return status["recent"][-1]

        outcome = asyncio.run(scenario())
        assert outcome["reply"] == DECLINED and bookings() == []
        assert outcome["approvals"] == [{"approved": False, "answer": "declined: no answer within 1.5 s"}]

    @pytest.mark.timeout(60)
    def test_a_repeated_or_late_approval_changes_nothing_and_an_unknown_request_is_refused(
        self,
        client: TaskHubGrpcClient,
        bookings: Callable[[], list[dict[str, str]]],
    ) -> None:
        thread = new_thread(client, every=2)

        async def scenario() -> tuple[str, str]:
            pending = await thread.ask("Book a flight to Paris.")
            request_id = pending.approvals[0]["id"]
            thread.answer(request_id, True)
            thread.answer(request_id, True)  # a client retrying: the approval orchestration takes the first answer only
            booked = await thread.wait(pending.status["pending"]["turn_id"])
            thread.answer(request_id, False)  # too late: its approval orchestration has completed
            return booked.text, (await thread.ask("Hello!")).text

        booked, after = asyncio.run(scenario())
        assert booked.startswith("Booked a flight to Paris") and after
        assert len(bookings()) == 1
        with pytest.raises(sample.ThreadError, match="has no approval request 'af-call-unknown'"):
            thread.answer("af-call-unknown", True)

    @pytest.mark.timeout(60)
    def test_the_client_role_leaves_an_approval_waiting_and_a_later_client_answers_it(
        self, capsys: pytest.CaptureFixture[str], scheduler_endpoint: str, bookings: Callable[[], list[dict[str, str]]]
    ) -> None:
        thread_id = f"approve-{uuid.uuid4().hex[:8]}"
        status, asked, _ = command_line(capsys, "--role", "client", "--thread", thread_id, "--say", BOOK)
        assert status == 0 and "Approval: the agent asks to run book_flight(" in asked and bookings() == []
        request_id = asked.split("answer with --approve ")[1].split()[0]
        status, approved, _ = command_line(capsys, "--role", "client", "--thread", thread_id, "--approve", request_id)
        assert status == 0 and f"Approval: approved {request_id}" in approved
        assert "Agent: Booked a flight to Paris" in approved and len(bookings()) == 1


# region Tool approval on the durable thread


@pytest.mark.timeout(90)
def test_an_approval_survives_a_killed_worker_and_the_tool_runs_exactly_once(
    client: TaskHubGrpcClient,
    offline_model: OfflineModelServer,
    workers: Callable[..., WorkerProcess],
    bookings: Callable[[], list[dict[str, str]]],
) -> None:
    thread = new_thread(client)
    worker = workers(offline_model.base_url)

    async def until_pending() -> sample.Reply:
        await thread.ask("My name is Alice.")
        return await thread.ask("Book a flight to Paris.")

    pending = asyncio.run(until_pending())
    assert [request["function_call"]["name"] for request in pending.approvals] == ["book_flight"]
    approval = f"{thread.thread_id}:approval:{pending.approvals[0]['id']}"
    while (state := client.get_orchestration_state(approval)) is None or state.runtime_status.name != "RUNNING":
        threading.Event().wait(0.02)  # its first step (the durable timer) ran: a SIGKILL mid-step would strand it
    worker.finish(signal.SIGKILL)  # the request waits in the scheduler, not in any worker
    assert bookings() == []
    replacement = workers(offline_model.base_url)
    thread.answer(pending.approvals[0]["id"], True)

    async def after_approval() -> tuple[str, str]:
        booked = await thread.wait(pending.status["pending"]["turn_id"])
        return booked.text, (await thread.ask("What is my name?")).text

    booked, recall = asyncio.run(after_approval())
    assert booked.startswith("Booked a flight to Paris, confirmation booking-")
    assert [booking["destination"] for booking in bookings()] == ["Paris"]
    assert recall == "Your name is Alice."  # the conversation carried on, memory intact
    assert replacement.finish() == (0, "")


# endregion

# region Worker processes: replaced, stopped, killed


@pytest.mark.timeout(60)
def test_one_chat_client_serves_concurrent_turns_of_different_threads(
    scheduler: SchedulerBackend, client: TaskHubGrpcClient, gate: ModelGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []

    def counting_client(**kwargs: Any) -> Any:
        built.append(original(**kwargs))
        return built[-1]

    original = roles.OpenAIChatCompletionClient
    monkeypatch.setattr(roles, "OpenAIChatCompletionClient", counting_client)
    turns = roles.AgentTurns({"model": OFFLINE_MODEL_NAME, "api_key": "offline", "base_url": gate.url})
    worker = roles.new_worker(scheduler.worker(), turns)
    worker.start()
    alice, bob = new_thread(client), new_thread(client)

    async def scenario() -> tuple[str, str]:
        turn_ids = [alice.raise_turn("My name is Alice."), bob.raise_turn("My name is Bob.")]
        for _ in range(600):  # both activities wait on the model at once, on the one event loop
            if gate.requests == 2:
                break
            await asyncio.sleep(0.05)
        assert gate.requests == 2, "the two turns did not run concurrently"
        gate.released.set()
        await alice.wait(turn_ids[0])
        await bob.wait(turn_ids[1])
        replies = await asyncio.gather(alice.ask("What is my name?"), bob.ask("What is my name?"))
        return replies[0].text, replies[1].text

    try:
        alice_reply, bob_reply = asyncio.run(scenario())
    finally:
        worker.stop()
        turns.close()
    assert "Alice" in alice_reply and "Bob" not in alice_reply
    assert "Bob" in bob_reply and "Alice" not in bob_reply
    assert len(built) == 1  # four turns, one client
    # close() closed the client inside its loop, then stopped the loop and its thread.
    assert turns.chat_client is built[0] and built[0].client.is_closed()
    assert turns._loop.is_closed() and not turns._thread.is_alive()
    turns.close()  # a second close does nothing


@pytest.mark.timeout(90)
def test_worker_process_killed_between_turns_is_replaced(
    client: TaskHubGrpcClient, offline_model: OfflineModelServer, workers: Callable[..., WorkerProcess]
) -> None:
    thread = new_thread(client, every=2)
    worker = workers(offline_model.base_url)
    first = asyncio.run(thread.ask("My name is Alice.")).text
    worker.finish(signal.SIGKILL)
    # A turn raised while no worker runs stays queued in the scheduler...
    turn_id = thread.raise_turn("What is my name?")
    status = thread.status()
    assert status is not None and status["turns"] == 1 and status["recent"][-1]["turn_id"] != turn_id
    replacement = workers(offline_model.base_url)

    async def scenario() -> tuple[str, sample.Reply]:
        # ... and the new worker answers it from the session the old one produced.
        reply = (await thread.wait(turn_id)).text
        return reply, await thread.ask("Where do I live?")  # crosses a continue-as-new

    reply, follow_up = asyncio.run(scenario())
    assert "Alice" in first and "Alice" in reply and "Paris" not in follow_up.text
    assert (follow_up.status["turns"], follow_up.status["messages"], follow_up.status["generation"]) == (3, 6, 1)
    assert replacement.finish() == (0, "")


@pytest.mark.timeout(90)
def test_sigterm_during_a_turn_lets_that_turn_finish_and_a_second_signal_does_not_cut_it_short(
    client: TaskHubGrpcClient, gate: ModelGate, workers: Callable[..., WorkerProcess]
) -> None:
    thread = new_thread(client)
    worker = workers(gate.url)
    turn_id = thread.raise_turn("My name is Alice.")
    assert gate.arrived.wait(timeout=30), "the activity never called the model"
    worker.process.send_signal(signal.SIGTERM)  # the activity is now waiting on the model
    worker.wait_for_line("Stopping the worker")
    for repeated in (signal.SIGTERM, signal.SIGINT):  # an impatient supervisor, a second Ctrl+C: the stop goes on
        worker.process.send_signal(repeated)
        worker.wait_for_line("Already stopping: running work items finish first")
    assert worker.process.poll() is None
    gate.released.set()
    assert worker.finish(None) == (0, "")
    # The stopped worker delivered the activity's result; a new worker lets the orchestrator record it.
    replacement = workers(gate.url)

    async def scenario() -> tuple[str, sample.Reply]:
        return (await thread.wait(turn_id)).text, await thread.ask("What is my name?")

    reply, recall = asyncio.run(scenario())
    assert "Alice" in reply and "Alice" in recall.text
    assert gate.requests == 2  # one model call per turn: the interrupted turn was not run again
    assert (recall.status["turns"], recall.status["messages"]) == (2, 4)
    replacement.finish()


@pytest.mark.timeout(60)
def test_a_worker_killed_mid_turn_on_the_embedded_scheduler_is_reported_as_lost(
    scheduler: SchedulerBackend, client: TaskHubGrpcClient, gate: ModelGate, workers: Callable[..., WorkerProcess]
) -> None:
    if not scheduler.is_embedded:
        pytest.skip("a Durable Task Scheduler re-dispatches the activity: see the next test")
    thread = new_thread(client)
    worker = workers(gate.url)
    turn_id = thread.raise_turn("My name is Alice.")
    assert gate.arrived.wait(timeout=30)
    worker.finish(signal.SIGKILL)
    with pytest.raises(sample.ThreadError) as raised:
        asyncio.run(thread.wait(turn_id, timeout=1))
    message = str(raised.value)
    assert f"no reply to {turn_id} within 1 s: its worker is slow or died mid-turn" in message
    assert "embedded scheduler lost it" in message and "answered once a worker runs" not in message
    client.terminate_orchestration(thread.thread_id, recursive=False)  # stuck for good on this scheduler


@pytest.mark.timeout(600)
def test_worker_killed_mid_activity_is_retried_by_the_scheduler(
    request: pytest.FixtureRequest,
    scheduler: SchedulerBackend,
    client: TaskHubGrpcClient,
    gate: ModelGate,
    workers: Callable[..., WorkerProcess],
) -> None:
    if scheduler.is_embedded or not using_real_services(request.config):
        pytest.skip(
            "needs a real Durable Task Scheduler (--use-env with DTS_ENDPOINT): the embedded in-memory backend, "
            "however it was started, never re-dispatches an activity whose worker died (it has no lock timeout); "
            "the managed one does once the work item's lock expires"
        )
    thread = new_thread(client)
    worker = workers(gate.url)
    turn_id = thread.raise_turn("My name is Alice.")
    assert gate.arrived.wait(timeout=60)
    worker.finish(signal.SIGKILL)
    gate.released.set()
    replacement = workers(gate.url)
    reply = asyncio.run(thread.wait(turn_id, timeout=540))
    assert "Alice" in reply.text and reply.status["turns"] == 1
    replacement.finish()


# endregion

# region Bad input and misconfiguration: one line, nothing created


def test_bad_thread_ids_are_refused_before_anything_is_sent(client: TaskHubGrpcClient) -> None:
    for bad in ["", "\udcff", "x" * 65, "a/b", "@entity"]:
        with pytest.raises(sample.InvalidThreadInput, match="invalid thread id"):
            sample.OrchestratedThread(client, bad)


def command_line(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The script's command line, run in this process: (exit status, stdout, stderr)."""
    try:
        roles.command_line(list(argv))
        status = 0
    except SystemExit as exit_info:
        status = int(exit_info.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_client_role_refuses_a_bad_thread_id_in_one_line(
    capsys: pytest.CaptureFixture[str], scheduler_endpoint: str, client: TaskHubGrpcClient
) -> None:
    for thread_id in ["", "\udcff", "x" * 200]:  # what `--thread ''`, `--thread $'\xff'` and a long id arrive as
        status, _, err = command_line(capsys, "--role", "client", "--thread", thread_id, "--say", "Hi")
        assert status == 1 and err.startswith("error: invalid thread id") and err.count("\n") == 1, err
    assert client.get_orchestration_state("x" * 200) is None  # nothing was created


def test_an_instance_of_another_orchestration_is_not_taken_for_a_thread(
    client: TaskHubGrpcClient, capsys: pytest.CaptureFixture[str], scheduler_endpoint: str
) -> None:
    foreign = f"foreign-{uuid.uuid4().hex[:8]}"
    client.schedule_new_orchestration("some_other_samples_history", input={"turns": "no"}, instance_id=foreign)
    with pytest.raises(sample.ThreadError, match="is a 'some_other_samples_history' orchestration, not a thread"):
        sample.OrchestratedThread(client, foreign).start()
    status, _, err = command_line(capsys, "--role", "client", "--thread", foreign, "--say", "Hi")
    assert status == 1 and err.count("\n") == 1 and "not a thread" in err and "KeyError" not in err
    client.terminate_orchestration(foreign, recursive=False)


def test_a_message_over_the_limit_is_refused_before_the_thread_is_created(
    capsys: pytest.CaptureFixture[str], scheduler_endpoint: str, client: TaskHubGrpcClient
) -> None:
    thread_id = f"long-{uuid.uuid4().hex[:8]}"
    status, out, err = command_line(capsys, "--role", "client", "--thread", thread_id, "--say", "y" * 40_000)
    assert (status, out) == (1, "")  # refused before anything connected
    assert err == "error: the message has 40,000 characters, over the limit of 32,000\n"
    assert client.get_orchestration_state(thread_id) is None


def test_a_thread_that_could_pass_the_scheduler_message_limit_is_refused(
    client: TaskHubGrpcClient, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = sample.OrchestratedThread(client, f"test-{uuid.uuid4().hex[:10]}")
    with pytest.raises(sample.InvalidThreadInput, match=r"continue-as-new every 10 events .* over 3,145,728: lower"):
        thread.start(every=10)  # 10 events could replay 21 sessions of 256,000 bytes in one step
    thread.start(every=3)  # the default budget fits with up to 3 events per generation
    client.terminate_orchestration(thread.thread_id, recursive=False)
    with pytest.raises(SystemExit) as exit_info:
        run_sample(sample.main(every=10, session_budget=256_000), errors=ERRORS)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any backend started
    assert captured.err.startswith("error: continue-as-new every 10 events") and captured.err.count("\n") == 1


def test_client_and_worker_roles_need_a_configured_scheduler(
    capsys: pytest.CaptureFixture[str], no_service_settings: None
) -> None:
    for role in ("client", "worker"):
        status, out, err = command_line(capsys, "--role", role)
        assert (status, out) == (1, "")
        assert err.startswith(f"error: --role {role} needs DTS_ENDPOINT") and err.count("\n") == 1


@pytest.mark.timeout(90)
def test_a_failing_model_is_one_line_naming_the_settings_and_the_worker_logs_it(
    capsys: pytest.CaptureFixture[str], workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(f"http://127.0.0.1:{free_loopback_port()}/v1")  # nothing listens there
    thread_id = f"nomodel-{uuid.uuid4().hex[:8]}"
    status, out, err = command_line(capsys, "--role", "client", "--thread", thread_id, "--say", "Hi")
    assert status == 1, out
    line = err.strip()
    assert err.count("\n") == 1 and line.startswith("error: turn-") and "<class" not in line
    assert "failed and was not stored: the model service failed (Connection error.): check the worker's" in line
    assert line.count("OPENAI_API_KEY") == 1 and line.count("Connection error.") == 1
    status, errors = worker.finish()
    assert status == 0 and f"thread {thread_id}: the model service failed (Connection error.)" in errors


@pytest.mark.timeout(30)
def test_the_client_role_waits_for_a_reply_at_most_its_timeout(
    capsys: pytest.CaptureFixture[str], scheduler_endpoint: str, client: TaskHubGrpcClient
) -> None:
    thread_id = f"timeout-{uuid.uuid4().hex[:8]}"  # no worker hosts threads during this test
    try:
        status, out, err = command_line(capsys, "--role", "client", "--thread", thread_id, "--timeout", "0.5")
    finally:
        client.terminate_orchestration(thread_id, recursive=False)
    assert status == 1 and f"Started thread {thread_id}." in out
    assert err.startswith("error: no reply to turn-") and err.count("\n") == 1
    assert "within 0.5 s: no worker has taken it yet" in err


@pytest.mark.timeout(90)
def test_the_client_says_once_that_it_waits_for_a_worker_then_continues_the_thread(
    scheduler_endpoint: str, offline_model: OfflineModelServer, workers: Callable[..., WorkerProcess]
) -> None:
    thread_id = f"waiting-{uuid.uuid4().hex[:8]}"
    arguments = ["--role", "client", "--thread", thread_id, "--say", "My name is Alice.", "--say", "What is my name?"]
    client_process = start_child(
        [sys.executable, SCRIPT, *arguments], cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert client_process.stdout is not None
        lines = []
        for line in client_process.stdout:  # no worker runs yet
            lines.append(line)
            if line.startswith("Waiting for a worker"):
                break
        workers(offline_model.base_url)
        out, err = client_process.communicate(timeout=60)
    finally:
        stop_child(client_process)
    transcript = "".join(lines) + out
    assert client_process.returncode == 0, err
    assert transcript.count("Waiting for a worker") == 1 and "--role worker" in transcript
    assert f"Started thread {thread_id}." in transcript and "Agent: Your name is Alice." in transcript


# endregion


@pytest.mark.timeout(120)
def test_the_lesson_works_copied_alone(tmp_path: Path, offline_model: OfflineModelServer) -> None:
    """A reader copies the script's orchestrations, activity and client class, and from the plumbing module the
    worker's `AgentTurns`, the archive page entity, `new_worker` and the archive reader; a two-turn conversation
    and an approval run alone."""
    lesson = [
        "INSTRUCTIONS", "USER_TURN", "APPROVAL", "HISTORY", "MAX_TURN_CHARS", "RECENT_TURNS", "REMEMBERED_TURN_IDS",
        "SESSION_JSON_BYTES", "SCHEDULER_MESSAGE_LIMIT_BYTES", "IDENTIFIER", "COUNTERS", "ENDED", "QUEUED", "LOST",
        "ARCHIVE_PAGE_BYTES", "ARCHIVE_PAGES", "ThreadError", "InvalidThreadInput", "book_flight", "take_turn",
        "thread_orchestrator", "send_to_archive", "approval_orchestrator", "thread_status", "Reply",
        "OrchestratedThread", "check_step_size",
    ]  # fmt: skip
    line = "from copied import ThreadError, approval_orchestrator, take_turn, thread_orchestrator"
    hosting = ["AgentTurns", "thread_archive", "new_worker", "read_archive", "read_page"]
    plumbing = standalone_source(ROLES, hosting).replace("\n\n", f"\n{line}\n\n", 1)  # after `from __future__`
    (tmp_path / "thread_worker.py").write_text(plumbing, encoding="utf-8")
    body = EMBEDDED_SCHEDULER + STANDALONE_BODY.replace("MODEL_URL", offline_model.base_url)
    body = body.replace("MODEL_NAME", OFFLINE_MODEL_NAME)
    assert run_standalone(tmp_path, SCRIPT, lesson, body).stdout == "copied thread: ok\n"


STANDALONE_BODY = """
    import asyncio  # after EMBEDDED_SCHEDULER: `port`, `backend`
    from durabletask.client import TaskHubGrpcClient
    from durabletask.worker import TaskHubGrpcWorker
    from copied import OrchestratedThread
    from thread_worker import AgentTurns, new_worker

    turns = AgentTurns({"model": "MODEL_NAME", "api_key": "offline", "base_url": "MODEL_URL"})
    worker = new_worker(TaskHubGrpcWorker(host_address=f"localhost:{port}"), turns)
    worker.start()
    client = TaskHubGrpcClient(host_address=f"localhost:{port}")

    async def conversation():
        thread = OrchestratedThread(client, "copied-thread")
        assert thread.start() is True
        assert (await thread.ask("My name is Alice.")).text == "Nice to meet you, Alice!"
        assert (await thread.ask("What is my name?")).text == "Your name is Alice."
        pending = await thread.ask("Book a flight to Paris.")
        thread.answer(pending.approvals[0]["id"], False)
        declined = await thread.wait(pending.status["pending"]["turn_id"])
        assert declined.text == "I did not book the flight to Paris: the request was declined.", declined
        print("copied thread: ok")

    try:
        asyncio.run(conversation())
    finally:
        client.terminate_orchestration("copied-thread", recursive=False)
        client.close()
        worker.stop()
        turns.close()
        backend.stop()
"""
