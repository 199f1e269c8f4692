"""durable_task_multi_agent_thread.py: each agent runs only its own tools, one history shared by both, concurrent
turns stored whole with nothing lost and in the scheduler's order, and the demo with its worker in another process."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agent_framework import AgentSession
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask.client import TaskHubGrpcClient
from durabletask.history import EventRaisedEvent

import durable_task_multi_agent_thread as sample
from durable_chat_history import ChatHistory
from durable_task_activity_chat_message_store import DurableTaskActivityChatMessageStore
from durable_task_multi_agent_thread import PLANNER, RESEARCHER, TOOLS
from sample_support import SchedulerBackend, select_model
from sample_support.offline_model import OfflineModelServer
from tests.conftest import REPO_DIR, ScriptRunner, start_worker_process, stop_worker_process, store_worker, unique
from tests.test_durable_task_chat_message_store import PUBLIC_API

SCRIPT = "durable_task_multi_agent_thread.py"
OWNER = {tool.name: name for name, tools in TOOLS.items() for tool in tools}
ToolRuns = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="class")
def worker(scheduler: SchedulerBackend) -> Iterator[None]:
    with store_worker(scheduler, DurableTaskActivityChatMessageStore.register):
        yield


@pytest.fixture
def tool_runs(monkeypatch: pytest.MonkeyPatch) -> ToolRuns:
    """(tool name, arguments) of every call of the sample's Python tool functions, in order."""
    runs: ToolRuns = []
    for each in (tool for tools in TOOLS.values() for tool in tools):
        original = each.func
        assert original is not None

        @functools.wraps(original)
        def recording(*args: Any, _name: str = each.name, _original: Any = original, **kwargs: Any) -> Any:
            runs.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(each, "func", recording)
    return runs


@contextlib.asynccontextmanager
async def two_agents(client: TaskHubGrpcClient) -> AsyncIterator[sample.Team]:
    """The sample's team on one store whose writes all stay in one orchestration run (its event log holds them)."""
    chat_client = OpenAIChatCompletionClient(**select_model().client_kwargs())
    try:
        store = DurableTaskActivityChatMessageStore(client, writes_per_generation=16, history_budget_bytes=60_000)
        yield sample.new_team(chat_client, store)
    finally:
        await chat_client.client.close()


def test_the_calculator_tool_does_arithmetic_and_never_evaluates_code() -> None:
    assert sample.calculate.func("(12 + 3) * 7 / -2") == "-52.5"
    assert sample.calculate.func("__import__('os').getcwd()").startswith("cannot calculate")
    assert sample.calculate.func("1 / 0").startswith("cannot calculate")


def test_the_sample_imports_only_the_public_api_of_the_chat_store() -> None:
    tree = ast.parse((REPO_DIR / SCRIPT).read_text(encoding="utf-8"))
    imported = {
        node.module: [alias.name for alias in node.names]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("durable_")
    }
    assert set(imported.get("durable_task_chat_message_store", [])) <= set(PUBLIC_API)
    assert imported["durable_task_activity_chat_message_store"] == ["ChatRecord", "DurableTaskActivityChatMessageStore"]
    assert imported["durable_chat_history"] == ["ChatHistoryError", "HistoryTimeout"]


@pytest.mark.usefixtures("worker")
class TestTwoAgentsOnOneThread:
    @pytest.mark.timeout(60)
    def test_each_agent_runs_only_its_own_tools_and_both_answer_from_one_history(
        self, client: TaskHubGrpcClient, offline_model: OfflineModelServer, tool_runs: ToolRuns
    ) -> None:
        thread_id, control_id = unique("own-tools"), unique("control")
        emitted_before = len(offline_model.tool_calls_emitted())

        async def scenario() -> list[Any]:
            async with two_agents(client) as team:

                async def turn(name: str, text: str, runs: ToolRuns, thread: str = thread_id) -> str:
                    before = len(tool_runs)
                    response = await team.agents[name].run(text, session=AgentSession(session_id=thread))
                    assert tool_runs[before:] == runs, f"{name} answering {text!r}"
                    return response.text

                await turn(RESEARCHER, "My name is Alice.", [])
                weather = await turn(
                    RESEARCHER, "What's the weather in Seattle?", [("get_weather", {"location": "Seattle"})]
                )
                assert "sunny, 18 degrees Celsius (sample data for Seattle)" in weather
                calc_by_researcher = await turn(RESEARCHER, "What is 12 * 7?", [])
                assert "I don't have a tool to do calculations" in calc_by_researcher and "84" not in calc_by_researcher
                assert "84" in await turn(PLANNER, "What is 12 * 7?", [("calculate", {"expression": "12 * 7"})])
                weather_by_planner = await turn(PLANNER, "What's the weather in Paris?", [])
                assert "I don't have a tool to check the weather" in weather_by_planner
                money = await turn(
                    PLANNER,
                    "Convert 100 USD to EUR.",
                    [("convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"})],
                )
                assert "92.00 EUR" in money
                assert await turn(PLANNER, "What is my name?", []) == "Your name is Alice."  # told to the Researcher
                assert "Alice" not in await turn(PLANNER, "What is my name?", [], thread=control_id)
                return await team.store.get_records(thread_id)

        try:
            records = asyncio.run(scenario())
        finally:
            for each in (thread_id, control_id):
                client.terminate_orchestration(f"activity-chat-history-{each}", recursive=False)
        # 3 tool turns of 4 messages (user, call, result, answer) and 4 plain turns of 2
        assert [record.metadata["sequence"] for record in records] == list(range(1, 21))
        assert [sample.author_of(turn) for turn in sample.turns(records)] == [RESEARCHER] * 3 + [PLANNER] * 4
        calls = {
            content.call_id: content.name
            for record in records
            for content in record.message.contents
            if content.type == "function_call"
        }
        assert sorted(calls.values()) == ["calculate", "convert_currency", "get_weather"]
        for record in records:  # the scheduler's records say which agent called and ran each tool
            for content in record.message.contents:
                if content.type in ("function_call", "function_result"):
                    assert record.metadata["author"] == OWNER[calls[content.call_id]]
        # The model never asked for a tool it was not offered: every call it emitted was run, by its owner.
        assert offline_model.tool_calls_emitted()[emitted_before:] == tool_runs

    @pytest.mark.timeout(60)
    def test_concurrent_turns_are_stored_whole_in_arrival_order_and_neither_sees_the_other(
        self, client: TaskHubGrpcClient, tool_runs: ToolRuns
    ) -> None:
        thread_id = unique("together")
        rounds = [
            {RESEARCHER: "What time is it in Tokyo?", PLANNER: "Convert 100 USD to EUR."},
            {RESEARCHER: "What is my favorite color?", PLANNER: "My favorite color is blue."},
            {RESEARCHER: "What's the weather in Seattle?", PLANNER: "What is 12 * 7?"},
        ]
        asked: list[tuple[str, str, str]] = []  # (agent, question, answer)

        async def scenario() -> list[Any]:
            async with two_agents(client) as team:
                await sample.ask(team, thread_id, RESEARCHER, "My name is Alice.")
                for questions in rounds:
                    before = len(await team.store.get_records(thread_id))
                    answers = await sample.ask_together(team, thread_id, questions)
                    assert team.loaded.started_from == {RESEARCHER: before, PLANNER: before}
                    asked.extend((name, text, answers[name]) for name, text in questions.items())
                # Told to the Planner while the Researcher was answering: not seen then, seen on the next turn.
                answered = {(name, text): answer for name, text, answer in asked}
                assert answered[RESEARCHER, "What is my favorite color?"].startswith("I don't know your favorite color")
                recall = await team.agents[RESEARCHER].run(
                    "What is my favorite color?", session=AgentSession(session_id=thread_id)
                )
                assert recall.text == "Your favorite color is blue."
                return await team.store.get_records(thread_id)

        records = asyncio.run(scenario())
        assert sorted(name for name, _ in tool_runs) == ["calculate", "convert_currency", "get_time", "get_weather"]
        turns = sample.turns(records)
        # Nothing lost: 1 + 6 + 1 turns; 4 of them ran a tool (user, call, result, answer), 4 did not.
        assert len(records) == 4 * 4 + 4 * 2
        assert [record.metadata["sequence"] for record in records] == list(range(1, len(records) + 1))
        assert len(turns) == len({record.metadata["write_id"] for record in records}) == 8  # no turn interleaved
        concurrent = turns[1:7]
        stored = {(sample.author_of(turn), turn[0].message.text): turn for turn in concurrent}
        assert len(stored) == 6
        for name, question, answer in asked:
            turn = stored[(name, question)]
            assert turn[0].metadata["role"] == "user" and turn[-1].message.text == answer
            assert {record.metadata["author"] for record in turn[1:]} == {name}
        for pair in (concurrent[0:2], concurrent[2:4], concurrent[4:6]):  # each round stored before the next began
            assert {sample.author_of(turn) for turn in pair} == {RESEARCHER, PLANNER}

        # The records' order is the order the append events reached the orchestration (its event log).
        instance_id = f"activity-chat-history-{thread_id}"
        arrivals = [
            json.loads(event.input)["write_id"]
            for event in client.get_orchestration_history(instance_id)
            if isinstance(event, EventRaisedEvent) and event.name == ChatHistory.APPEND_EVENT and event.input
        ]
        assert arrivals == [turn[0].metadata["write_id"] for turn in turns]
        client.terminate_orchestration(instance_id, recursive=False)


@pytest.mark.timeout(90)
def test_the_demo_with_its_worker_in_a_separate_process(scheduler_endpoint: str) -> None:
    worker = start_worker_process(SCRIPT)
    try:
        seen = asyncio.run(sample.main(role="client"))
    finally:
        stop_worker_process(worker)
    # Every write went through the activity in the worker process.
    assert {record.metadata["worker_id"].rsplit(":", 1)[1] for record in seen["records"]} == {str(worker.pid)}
    assert seen["answers"][5] == "Your name is Alice."  # asked of the Planner, told to the Researcher
    assert seen["before"] == 16 and seen["together"] == {RESEARCHER: 16, PLANNER: 16}
    assert [record.metadata["sequence"] for record in seen["records"]] == list(range(1, 27))
    authors = Counter(record.metadata["author"] for record in seen["records"])
    assert authors == {"user": 9, RESEARCHER: 9, PLANNER: 8} == seen["status"]["stats"]["by_author"]


@pytest.mark.timeout(90)
def test_the_script_runs_as_a_user_would_and_leaves_nothing_open(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, timeout=80, env={"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error::ResourceWarning"})
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr and "Traceback" not in result.stderr
    out = result.stdout
    assert out.startswith("Backends: model=offline model")
    assert "Agent (Researcher): The weather in Seattle: sunny" in out
    assert "Agent (Researcher): I don't have a tool to do calculations like 12 * 7" in out
    assert "Agent (Planner): 12 * 7 = 84." in out
    assert "Agent (Planner): Your name is Alice." in out
    assert "The thread held 16 messages before and holds 24 now" in out
    assert '    Researcher: get_weather({"location": "Seattle"}), get_time({"location": "Tokyo"})' in out
    assert '    Planner: calculate({"expression": "12 * 7"}), convert_currency(' in out
    assert "Ended the demo's thread orchestration" in out


def test_help_runs_nothing_and_an_unknown_flag_is_refused(run_script_here: ScriptRunner) -> None:
    helped = run_script_here(SCRIPT, "--help")
    assert helped.returncode == 0 and "--role {all,worker,client}" in helped.stdout and "Backends:" not in helped.stdout
    assert "--timeout SECONDS" in helped.stdout
    refused = run_script_here(SCRIPT, "--agents", "3")
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr
