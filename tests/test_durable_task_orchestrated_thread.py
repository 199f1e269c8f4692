"""durable_task_orchestrated_thread.py: one orchestration per thread, turns as events, the agent in an activity.

The scheduler is the embedded one over real gRPC (or DTS_ENDPOINT with --use-env). Worker processes started
here send their model requests to this process's offline model (directly, or through a gate that holds a
request until the test releases it), so the no-rejection check covers them too.
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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from durabletask.worker import TaskHubGrpcWorker

import durable_task_orchestrated_thread as sample
from sample_support import ModelBackend, SampleError, SchedulerBackend, run_sample, select_model
from sample_support.durable_worker import wait_for_custom_status
from sample_support.offline_model import OFFLINE_MODEL_NAME, OfflineModelServer
from tests.conftest import REPO_DIR, ScriptRunner, expected_banner, using_real_services


def new_thread(scheduler: SchedulerBackend, **options: Any) -> sample.OrchestratedThread:
    thread = sample.OrchestratedThread(scheduler.client(), f"test-{uuid.uuid4().hex[:10]}")
    assert thread.start(**options) is True
    return thread


def stored_session(thread: sample.OrchestratedThread) -> dict[str, Any]:
    """The session the current generation started with (its input is the state continue-as-new carried)."""
    state = thread.client.get_orchestration_state(thread.thread_id)
    assert state is not None
    return state.get_input()["session"]


def session_messages(thread: sample.OrchestratedThread) -> list[dict[str, Any]]:
    return stored_session(thread)["state"]["in_memory"]["messages"]


@pytest.fixture
def in_process_worker(scheduler: SchedulerBackend) -> Iterator[TaskHubGrpcWorker]:
    with sample.AgentTurns(select_model()) as turns:
        worker = sample.new_worker(scheduler, turns)
        worker.start()
        yield worker
        worker.stop()


# region Worker processes and a model gate


class WorkerProcess:
    """`python durable_task_orchestrated_thread.py --role worker`, pointed at the test's scheduler and model."""

    def __init__(self, model_url: str) -> None:
        env = {**os.environ, "OPENAI_API_KEY": "offline", "OPENAI_MODEL": OFFLINE_MODEL_NAME}
        env["OPENAI_BASE_URL"] = model_url
        self.process = subprocess.Popen(
            [sys.executable, "durable_task_orchestrated_thread.py", "--role", "worker"],
            cwd=REPO_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for_line("Worker ready")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, start: str) -> None:
        while not self.lines.get(timeout=30).startswith(start):
            continue

    def finish(self) -> tuple[int, str]:
        """Wait for the process to end; return its exit status and stderr."""
        assert self.process.stderr is not None
        return self.process.wait(timeout=30), self.process.stderr.read()


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
                with urllib.request.urlopen(forwarded, timeout=30) as answer:
                    payload = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

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


@pytest.mark.timeout(60)
def test_main_demo_recalls_across_generations_and_worker_replacement(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(sample.main())
    out, err = capsys.readouterr()
    assert err == ""
    agent_lines = [line.removeprefix("Agent: ") for line in out.splitlines() if line.startswith("Agent: ")]
    # 9 thread turns (the duplicate is not answered again) + 1 control turn.
    assert len(agent_lines) == 10
    assert "Alice" in agent_lines[3]  # asked after the first continue-as-new
    assert ("Paris" in agent_lines[5], "blue" in agent_lines[6]) == (True, True)
    assert "Alice" in agent_lines[8]  # asked while no worker ran, answered by the new worker
    assert "Alice" not in agent_lines[9]  # control: a new thread knows nothing
    assert "continue-as-new: generation 0 -> 1" in out
    assert "duplicates_ignored=1]" in out.split("== 4.")[0].split("== 3.")[1]
    final = json.loads(out.split("custom status:\n")[1].split("\n\nEnded")[0])
    assert {key: final[key] for key in ("turns", "messages", "generation", "duplicates_ignored", "trimmed")} == {
        "turns": 9,
        "messages": 18,
        "generation": 3,
        "duplicates_ignored": 1,
        "trimmed": 0,
    }


@pytest.mark.timeout(60)
def test_ten_turns_back_to_back_events_and_a_duplicate(
    scheduler: SchedulerBackend, in_process_worker: TaskHubGrpcWorker
) -> None:
    thread, control = new_thread(scheduler, every=3), new_thread(scheduler, every=3)
    facts = ["My name is Alice.", "I live in Paris.", "My favorite color is blue."]
    questions = {"What is my name?": "Alice", "Where do I live?": "Paris", "What is my favorite color?": "blue"}

    async def scenario() -> tuple[list[str], list[str], dict[str, Any], str]:
        turn_ids, replies = [], []
        for fact in facts:  # turns 1-3: the third ends generation 0
            turn_ids.append(thread.raise_turn(fact))
            replies.append((await thread.wait_for_reply(turn_ids[-1]))[0])
        # Turns 4-7 raised at once (the continue-as-new after turn 6 happens with turn 7 already waiting), and
        # turn 4 raised a second time with the same id.
        batch = [*questions, "Summarize our conversation."]
        turn_ids += [thread.raise_turn(text) for text in batch]
        thread.raise_turn(batch[0], turn_id=turn_ids[3])
        # A lost event shows up as a timeout here, well before the test's own timeout.
        replies += [(await thread.wait_for_reply(turn_id, timeout=20))[0] for turn_id in turn_ids[3:]]
        for text in [*questions]:  # turns 8-10, generation 2 -> 3
            turn_ids.append(thread.raise_turn(text))
            replies.append((await thread.wait_for_reply(turn_ids[-1]))[0])
        status = await wait_for_custom_status(
            thread.client, thread.thread_id, lambda status: bool(status and status["duplicates_ignored"]), timeout=30
        )
        control_reply = (await control.ask("What is my name?"))[0]
        return turn_ids, replies, status, control_reply

    turn_ids, replies, status, control_reply = asyncio.run(scenario())
    for question, reply in zip([*questions, *questions], [*replies[3:6], *replies[7:]], strict=True):
        assert questions[question] in reply, (question, reply)
    assert all(fact in replies[6] for fact in ("Alice", "Paris", "blue"))  # the summary saw all of them
    assert "Alice" not in control_reply
    assert {key: status[key] for key in ("turns", "messages", "generation", "duplicates_ignored")} == {
        "turns": 10,
        "messages": 20,
        "generation": 3,
        "duplicates_ignored": 1,
    }
    # Generation 3 started from the session after turn 9: each turn's user message once, in order.
    stored = session_messages(thread)
    assert [message["message_id"] for message in stored if message["role"] == "user"] == turn_ids[:9]
    assert len(stored) == 18


@pytest.mark.timeout(60)
def test_session_budget_trims_whole_exchanges_and_rejects_an_oversize_turn(
    scheduler: SchedulerBackend, in_process_worker: TaskHubGrpcWorker
) -> None:
    budget = 1_500  # about three short exchanges
    thread = new_thread(scheduler, every=2, session_budget=budget)

    async def scenario() -> list[str]:
        replies = [(await thread.ask(text))[0] for text in ["My name is Alice.", "I live in Paris.", "Hello!"]]
        with pytest.raises(SampleError, match=f"failed and was not stored: .*over the session budget of {budget:,}"):
            await thread.ask("Please remember this: " + "x" * 3_000)
        with pytest.raises(SampleError, match="over the limit of 32,000"):
            thread.raise_turn("y" * 40_000)
        replies.append((await thread.ask("Where do I live?"))[0])
        replies.append((await thread.ask("What is my name?"))[0])
        return replies

    replies = asyncio.run(scenario())
    status = thread.status()
    assert status is not None and status["trimmed"] > 0
    # Nothing vanished silently: every message of the five stored turns is either kept or counted as trimmed.
    assert status["messages"] + status["trimmed"] == 2 * 5
    assert "Paris" in replies[3]  # a recent exchange survived the trimming
    assert "Alice" not in replies[4]  # the oldest exchange was dropped, as the status says
    # Five turns stored; the oversize one was answered with an error and stored nothing.
    assert status["turns"] == 5
    assert session_messages(thread)[0]["role"] == "user"  # trimmed at an exchange boundary
    assert len(json.dumps(stored_session(thread)).encode()) <= budget


def test_trimming_keeps_the_newest_exchanges_that_fit() -> None:
    """The trimming serializes the session once and counts dropped bytes: the result must match a re-serialization."""
    history = [
        message
        for n in range(1, 30)
        for message in (
            {"role": "user", "contents": [{"type": "text", "text": "é" * n}]},  # six bytes each in JSON (\u00e9)
            {"role": "tool", "contents": [{"type": "text", "text": "x" * 3 * n}]},
            {"role": "assistant", "contents": [{"type": "text", "text": "ok"}]},
        )
    ]

    def session_with(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "session", "session_id": "s", "state": {"in_memory": {"messages": list(messages)}}}

    for budget in range(400, 9_000, 97):
        session = session_with(history)
        try:
            dropped = sample.trim_to_budget(session, budget)
        except sample.TurnRejected:
            assert sample.json_bytes(session_with(history[-3:])) > budget  # not even the last exchange fits
            continue
        kept = session["state"]["in_memory"]["messages"]
        assert (kept[0]["role"], dropped + len(kept)) == ("user", len(history))
        assert sample.json_bytes(session) <= budget
        if dropped:  # it stopped as soon as the session fitted: one more exchange would not have
            assert sample.json_bytes(session_with(history[dropped - 3 :])) > budget


class RecordingContext:
    """Just enough of an orchestration context to step `thread_orchestrator` by hand and record what it did."""

    instance_id = "thread-recorded"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_custom_status(self, status: dict[str, Any]) -> None:
        self.calls.append(("status", status["last_turn_id"]))

    def wait_for_external_event(self, name: str) -> str:
        self.calls.append(("wait", name))
        return "wait"

    def call_activity(self, name: str, *, input: dict[str, Any]) -> str:
        self.calls.append(("activity", input["turn_id"]))
        return "activity"

    def continue_as_new(self, state: dict[str, Any], *, save_events: bool) -> None:
        self.calls.append(("continue_as_new", (state["generation"], save_events)))


def run_generation(state: dict[str, Any], turn_ids: list[str]) -> list[tuple[str, Any]]:
    """Drive one generation of the orchestrator: each turn's event, then its activity's result."""
    ctx = RecordingContext()
    steps = sample.thread_orchestrator(ctx, state)  # type: ignore[arg-type]
    assert next(steps) == "wait"
    with pytest.raises(StopIteration):
        for turn_id in turn_ids:
            assert steps.send({"turn_id": turn_id, "message": "Hello!"}) == "activity"
            result = {"reply": f"reply to {turn_id}", "session": {"turn": turn_id}, "messages": 2, "trimmed": 0}
            assert steps.send(result) == "wait"
    return ctx.calls


def test_the_last_reply_of_a_generation_is_published_by_the_next_one() -> None:
    state = sample.initial_state(every=2, session_budget=sample.SESSION_BUDGET_BYTES)
    first = run_generation(state, ["t1", "t2"])
    # No status in the step that continues as new: a client would raise its next turn while the new
    # generation's first step is in flight, and the embedded scheduler holds such an event up to 100 ms.
    assert first == [
        ("status", None),
        ("wait", sample.USER_TURN),
        ("activity", "t1"),
        ("status", "t1"),
        ("wait", sample.USER_TURN),
        ("activity", "t2"),
        ("continue_as_new", (1, True)),
    ]
    second = run_generation(state, ["t3", "t4"])  # continue_as_new carried `state` over
    assert second[0] == ("status", "t2")  # the new generation publishes t2's reply first thing
    assert state["recent"][-2:] == [
        {"turn_id": "t3", "reply": "reply to t3"},
        {"turn_id": "t4", "reply": "reply to t4"},
    ]


def test_a_thread_that_could_pass_the_scheduler_message_limit_is_refused(
    scheduler: SchedulerBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every turn replays the session twice (the activity's input and result): continue-as-new every 10 turns with
    # the default budget could put 21 sessions (5.4 MB) in one step, over gRPC's 4 MiB.
    assert sample.largest_step_bytes(10, sample.SESSION_BUDGET_BYTES) > 5_000_000
    sample.check_size_limits(sample.TURNS_PER_GENERATION, sample.SESSION_BUDGET_BYTES)  # the defaults fit
    thread = sample.OrchestratedThread(scheduler.client(), f"test-{uuid.uuid4().hex[:10]}")
    with pytest.raises(SampleError, match=r"continue-as-new every 10 turns .* over 3,145,728: lower --every"):
        thread.start(every=10)
    assert thread.client.get_orchestration_state(thread.thread_id) is None  # nothing was scheduled
    thread.client.close()

    with pytest.raises(SystemExit) as exit_info:
        run_sample(sample.main(every=10))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any backend started
    assert captured.err.startswith("error: continue-as-new every 10 turns") and captured.err.count("\n") == 1


@pytest.mark.timeout(60)
def test_one_chat_client_serves_concurrent_turns_of_different_threads(
    scheduler: SchedulerBackend, gate: ModelGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []

    def counting_client(**kwargs: Any) -> Any:
        built.append(original(**kwargs))
        return built[-1]

    original = sample.OpenAIChatCompletionClient
    monkeypatch.setattr(sample, "OpenAIChatCompletionClient", counting_client)
    gated = ModelBackend(
        "offline", "the gate", {"model": OFFLINE_MODEL_NAME, "api_key": "offline", "base_url": gate.url}
    )
    turns = sample.AgentTurns(gated)
    worker = sample.new_worker(scheduler, turns)
    worker.start()
    alice, bob = new_thread(scheduler), new_thread(scheduler)

    async def scenario() -> tuple[str, str]:
        turn_ids = [alice.raise_turn("My name is Alice."), bob.raise_turn("My name is Bob.")]
        for _ in range(600):  # both activities wait on the model at once, on the one event loop
            if gate.requests == 2:
                break
            await asyncio.sleep(0.05)
        assert gate.requests == 2, "the two turns did not run concurrently"
        gate.released.set()
        await alice.wait_for_reply(turn_ids[0])
        await bob.wait_for_reply(turn_ids[1])
        (alice_reply, _), (bob_reply, _) = await asyncio.gather(
            alice.ask("What is my name?"), bob.ask("What is my name?")
        )
        return alice_reply, bob_reply

    try:
        alice_reply, bob_reply = asyncio.run(scenario())
    finally:
        worker.stop()
        turns.close()
    assert "Alice" in alice_reply and "Bob" not in alice_reply
    assert "Bob" in bob_reply and "Alice" not in bob_reply
    assert len(built) == 1  # four turns, one client
    # close() closed the client inside its loop, then stopped the loop and its thread.
    assert (
        turns.chat_client is built[0]
        and built[0].client.is_closed()
        and turns._loop.is_closed()
        and not turns._thread.is_alive()
    )
    turns.close()  # a second close does nothing


def test_client_and_worker_roles_need_a_configured_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_sample(sample.main("client"))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --role client needs DTS_ENDPOINT") and captured.err.count("\n") == 1


@pytest.mark.timeout(90)
def test_worker_process_killed_between_turns_is_replaced(
    scheduler: SchedulerBackend, scheduler_endpoint: str, offline_model: OfflineModelServer
) -> None:
    thread = new_thread(scheduler, every=2)
    worker = WorkerProcess(offline_model.base_url)
    try:
        first, _ = asyncio.run(thread.ask("My name is Alice."))
    finally:
        worker.process.send_signal(signal.SIGKILL)
        worker.finish()
    # A turn raised while no worker runs stays queued in the scheduler...
    turn_id = thread.raise_turn("What is my name?")
    status = thread.status()
    assert status is not None and status["turns"] == 1 and status["last_turn_id"] != turn_id
    replacement = WorkerProcess(offline_model.base_url)
    try:
        # ... and the new worker answers it from the session the old one produced.
        reply, status = asyncio.run(thread.wait_for_reply(turn_id))
        follow_up, status = asyncio.run(thread.ask("Where do I live?"))  # crosses a continue-as-new
    finally:
        replacement.process.send_signal(signal.SIGTERM)
        exit_status, stderr = replacement.finish()
    assert "Alice" in first and "Alice" in reply and "Paris" not in follow_up
    assert (status["turns"], status["messages"], status["generation"]) == (3, 6, 1)
    assert (exit_status, stderr) == (0, "")


@pytest.mark.timeout(90)
def test_sigterm_during_a_turn_lets_that_turn_finish(
    scheduler: SchedulerBackend, scheduler_endpoint: str, gate: ModelGate
) -> None:
    thread = new_thread(scheduler)
    worker = WorkerProcess(gate.url)
    turn_id = thread.raise_turn("My name is Alice.")
    assert gate.arrived.wait(timeout=30), "the activity never called the model"
    worker.process.send_signal(signal.SIGTERM)  # the activity is now waiting on the model
    worker.wait_for_line("Stopping the worker")
    gate.released.set()
    exit_status, stderr = worker.finish()
    assert (exit_status, stderr) == (0, "")
    # The stopped worker delivered the activity's result; a new worker lets the orchestrator record it.
    replacement = WorkerProcess(gate.url)
    try:
        reply, status = asyncio.run(thread.wait_for_reply(turn_id))
        recall, status = asyncio.run(thread.ask("What is my name?"))
    finally:
        replacement.process.send_signal(signal.SIGTERM)
        replacement.finish()
    assert "Alice" in reply and "Alice" in recall
    assert gate.requests == 2  # one model call per turn: the interrupted turn was not run again
    assert (status["turns"], status["messages"]) == (2, 4)


@pytest.mark.timeout(600)
def test_worker_killed_mid_activity_is_retried_by_the_scheduler(
    request: pytest.FixtureRequest, scheduler: SchedulerBackend, scheduler_endpoint: str, gate: ModelGate
) -> None:
    if scheduler.embedded is not None or not using_real_services(request.config):
        pytest.skip(
            "needs a real Durable Task Scheduler (--use-env with DTS_ENDPOINT): the embedded in-memory backend "
            "never re-dispatches an activity whose worker died (it has no lock timeout), the managed one does "
            "once the work item's lock expires"
        )
    thread = new_thread(scheduler)
    worker = WorkerProcess(gate.url)
    turn_id = thread.raise_turn("My name is Alice.")
    assert gate.arrived.wait(timeout=60)
    worker.process.send_signal(signal.SIGKILL)
    worker.finish()
    gate.released.set()
    replacement = WorkerProcess(gate.url)
    try:
        reply, status = asyncio.run(thread.wait_for_reply(turn_id, timeout=540))
    finally:
        replacement.process.send_signal(signal.SIGTERM)
        replacement.finish()
    assert "Alice" in reply and status["turns"] == 1


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would(run_script: ScriptRunner) -> None:
    result = run_script("durable_task_orchestrated_thread.py")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    banner = result.stdout.splitlines()[0]
    assert all(part in banner for part in expected_banner(scheduler=True))
    assert "continue-as-new: generation 0 -> 1" in result.stdout
    assert "Agent: Your name is Alice." in result.stdout
    assert "Runtime status: RUNNING" in result.stdout
    assert result.stdout.rstrip().endswith(".")
    assert "Ended the demo threads" in result.stdout
