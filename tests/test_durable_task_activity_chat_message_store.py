"""durable_task_activity_chat_message_store.py: metadata for every message, contiguous sequence numbers, idempotent
enrichment, the size budget, two writers at once, the copy-paste check, and the demo with its worker elsewhere."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
from agent_framework import Agent, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.client import TaskHubGrpcClient

import durable_task_activity_chat_message_store as sample
from durable_chat_history import ChatHistory, HistoryTooLarge, InvalidArgument
from durable_task_activity_chat_message_store import (
    DurableTaskActivityChatMessageStore,
    EnrichedChatHistory,
    enrich_chat_records,
)
from sample_support import SchedulerBackend, select_model
from sample_support.offline_model import OfflineModelServer
from tests.conftest import REPO_DIR, ScriptRunner, start_worker_process, stop_worker_process, store_worker, unique
from tests.standalone import EMBEDDED_SCHEDULER, run_standalone
from tests.test_durable_task_chat_message_store import ENGINE, PUBLIC_API, every_content_type, text_of, tool_exchange

SCRIPT = "durable_task_activity_chat_message_store.py"
COPYABLE = ["WORKER_ID", "enrich_chat_records", "activity_chat_history_orchestrator", "EnrichedChatHistory"]
COPYABLE += ["ChatRecord", "DurableTaskActivityChatMessageStore"]


def test_rerunning_the_activity_with_the_same_input_adds_nothing() -> None:
    """At-least-once delivery: a second run returns the same records, and applying them again stores nothing."""
    history = EnrichedChatHistory(EnrichedChatHistory.new(every=4, budget_bytes=200_000))
    write = {
        "write_id": "w1",
        "messages": [m.to_dict() | {"message_id": f"x{i}"} for i, m in enumerate(tool_exchange(1))],
    }
    write["first_sequence"] = 1
    first = enrich_chat_records(task.ActivityContext("orchestration", 1), write)
    again = enrich_chat_records(task.ActivityContext("orchestration", 2), write)
    assert first["messages"] == again["messages"] == write["messages"]
    for field in ("sequence", "message_id", "write_id", "role", "author", "content_types", "size_bytes"):
        assert [record[field] for record in first["metadata"]] == [record[field] for record in again["metadata"]]

    assert history.append("w1", first)
    assert history.new_messages(write) is None  # the same write id: nothing to enrich
    assert history.new_messages({**write, "write_id": "w2"}) == []  # the same messages under a new write id
    state = history.state
    assert len(state["messages"]) == len(state["metadata"]) == 4 and state["next_sequence"] == 5
    assert (state["duplicate_writes"], state["duplicate_messages"]) == (1, 4)
    assert state["bytes"] == sum(
        ChatHistory.size(list(row)) for row in zip(state["messages"], state["metadata"], strict=True)
    )


def test_summaries_are_refused_not_silently_ignored(client: TaskHubGrpcClient) -> None:
    """The chat store's `summarize=True` is inherited, but this store's orchestrator only trims: asking is an error."""
    with pytest.raises(InvalidArgument, match="does not summarize"):
        DurableTaskActivityChatMessageStore(client, summarize=True)
    assert DurableTaskActivityChatMessageStore(client, summarize=False).summarize is False


def test_the_sample_imports_only_the_public_api_of_the_chat_store() -> None:
    tree = ast.parse((REPO_DIR / SCRIPT).read_text(encoding="utf-8"))
    imported = [
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "durable_task_chat_message_store"
        for alias in node.names
    ]
    assert imported and set(imported) <= set(PUBLIC_API)


@pytest.fixture(scope="class")
def worker(scheduler: SchedulerBackend) -> Iterator[None]:
    with store_worker(scheduler, DurableTaskActivityChatMessageStore.register):
        yield


@pytest.mark.usefixtures("worker")
class TestWithAWorker:
    @pytest.mark.timeout(60)
    def test_every_message_has_metadata_with_contiguous_sequence_numbers(
        self, client: TaskHubGrpcClient, offline_model: OfflineModelServer
    ) -> None:
        session_id = unique("meta")
        weather_calls: list[str] = []

        @tool(approval_mode="never_require")
        def get_weather(location: Annotated[str, "The city"]) -> str:
            """Get the current weather for a location."""
            weather_calls.append(location)
            return f"Measured in {location}: 21 degrees."

        async def scenario() -> None:
            store = DurableTaskActivityChatMessageStore(client, writes_per_generation=2)
            chat_client = OpenAIChatCompletionClient(**select_model().client_kwargs())
            agent = Agent(client=chat_client, name="Researcher", tools=[get_weather], context_providers=[store])
            session = agent.create_session(session_id=session_id)
            await agent.run("My name is Alice.", session=session)
            weather = await agent.run("What's the weather in Seattle?", session=session)
            name = await agent.run("What is my name?", session=session)
            await chat_client.client.close()
            assert weather_calls == ["Seattle"] and "Measured in Seattle: 21 degrees." in weather.text
            assert "Alice" in name.text

            records = await store.get_records(session_id)
            status = await store.read_status(session_id)
            assert status is not None
            roles = ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
            assert [record.message.role for record in records] == roles
            assert [record.metadata["sequence"] for record in records] == list(range(1, 9))
            assert status["next_sequence"] == 9 and status["generation"] == 1  # 3 writes, continue-as-new every 2
            for record, stored in zip(records, status["messages"], strict=True):
                meta = record.metadata
                assert meta["message_id"] == record.message.message_id
                assert meta["role"] == record.message.role
                assert meta["author"] == ("user" if record.message.role == "user" else "Researcher")
                assert meta["content_types"] == sorted({content.type for content in record.message.contents})
                assert meta["size_bytes"] == ChatHistory.size(stored)
                assert meta["worker_id"] == sample.WORKER_ID  # this process's in-process worker
                datetime.fromisoformat(meta["stored_at"])
            write_ids = [record.metadata["write_id"] for record in records]
            assert len(set(write_ids)) == 3 and write_ids == sorted(write_ids, key=write_ids.index)
            assert records[3].metadata["content_types"] == ["function_call"]
            assert records[4].metadata["content_types"] == ["function_result"]

            stats = status["stats"]
            assert stats["messages"] == 8 and stats["activity_calls"] == 3
            assert stats["bytes"] == sum(record.metadata["size_bytes"] for record in records)
            assert stats["by_role"] == {"user": 3, "assistant": 4, "tool": 1}
            assert stats["by_author"] == {"user": 3, "Researcher": 5}
            assert stats["content_types"] == {"text": 6, "function_call": 1, "function_result": 1}

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_a_repeated_write_is_neither_enriched_nor_stored_again(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("dup")
        first, second, third = (Message("user", [f"m{n}"], message_id=f"m{n}") for n in range(3))

        async def scenario() -> None:
            store = DurableTaskActivityChatMessageStore(client)
            await store.save_messages(session_id, [first, second], write_id="w1")
            await store.save_messages(session_id, [first, second], write_id="w1")
            await store.save_messages(session_id, [first, second], write_id="w2")  # only duplicates
            await store.save_messages(session_id, [second, third], write_id="w3")
            records = await store.get_records(session_id)
            status = await store.read_status(session_id)
            assert status is not None
            assert [(r.metadata["message_id"], r.metadata["sequence"]) for r in records] == [
                ("m0", 1),
                ("m1", 2),
                ("m2", 3),
            ]
            assert [record.metadata["write_id"] for record in records] == ["w1", "w1", "w3"]
            assert status["stats"]["activity_calls"] == 2 and status["stats"]["messages"] == 3
            assert (status["writes"], status["duplicate_writes"], status["duplicate_messages"]) == (3, 1, 3)

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_the_size_budget_refuses_oversize_writes_and_trims_messages_with_their_metadata(
        self, client: TaskHubGrpcClient
    ) -> None:
        session_id = unique("budget")
        budget = 5_000

        async def scenario() -> None:
            store = DurableTaskActivityChatMessageStore(client, history_budget_bytes=budget)
            with pytest.raises(HistoryTooLarge, match="nothing was stored"):
                await store.save_messages(session_id, [Message("user", ["x" * budget])])
            with pytest.raises(HistoryTooLarge, match="history budget of 200,000 bytes"):  # a 1 MB message
                await DurableTaskActivityChatMessageStore(client).save_messages(
                    session_id, [Message("user", ["y" * 2**20])]
                )
            for number in range(6):
                await store.save_messages(session_id, tool_exchange(number))
                records = await store.get_records(session_id)  # raises if messages and metadata ever disagree
                status = await store.read_status(session_id)
                assert status is not None
                assert ChatHistory.size({"messages": status["messages"], "metadata": status["metadata"]}) <= budget
                sequences = [record.metadata["sequence"] for record in records]
                assert sequences == list(range(status["trimmed"] + 1, status["next_sequence"]))
                assert records[0].message.role == "user"
            assert status["trimmed"] > 0 and status["stats"]["messages"] == 24  # statistics keep counting

            # Messages that fit the budget alone but not with their metadata: refused by the orchestration.
            near = DurableTaskActivityChatMessageStore(client, history_budget_bytes=50_000)
            await near.save_messages(session_id, [Message("user", ["y" * (budget - 400)])])
            with pytest.raises(HistoryTooLarge, match=f"over the history budget of {budget:,}"):
                await near.get_records(session_id)

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_every_content_type_round_trips_with_its_metadata(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("contents")
        written = every_content_type()

        async def scenario() -> None:
            store = DurableTaskActivityChatMessageStore(client)
            await store.save_messages(session_id, written, write_id="w-all")
            records = await store.get_records(session_id)
            expected = [message.to_dict() for message in written]
            expected[5]["message_id"] = "w-all-5"
            assert [record.message.to_dict() for record in records] == expected
            assert [record.metadata["content_types"] for record in records][3:5] == [["error"], ["uri"]]

        asyncio.run(scenario())

    @pytest.mark.timeout(60)
    def test_two_writers_at_once_lose_nothing_and_each_write_keeps_consecutive_sequence_numbers(
        self, scheduler: SchedulerBackend
    ) -> None:
        session_id = unique("two-writers")
        clients = [scheduler.client(), scheduler.client()]

        async def writer(number: int) -> None:
            store = DurableTaskActivityChatMessageStore(clients[number], writes_per_generation=3)
            for write in range(6):
                await store.save_messages(
                    session_id, [Message("user", [f"{number}.{write}.{part}"]) for part in range(3)]
                )
            await store.get_records(session_id)

        async def scenario() -> list[sample.ChatRecord]:
            await asyncio.gather(writer(0), writer(1))
            return await DurableTaskActivityChatMessageStore(clients[0]).get_records(session_id)

        try:
            records = asyncio.run(scenario())
        finally:
            for each in clients:
                each.close()
        assert sorted(text_of(r.message) for r in records) == sorted(
            f"{n}.{w}.{p}" for n in (0, 1) for w in range(6) for p in range(3)
        )
        assert [record.metadata["sequence"] for record in records] == list(range(1, 37))
        for start in range(0, 36, 3):  # a write's three messages are consecutive, in order, under one write id
            write = records[start : start + 3]
            assert len({record.metadata["write_id"] for record in write}) == 1
            assert [text_of(record.message).rsplit(".", 1)[1] for record in write] == ["0", "1", "2"]


@pytest.mark.timeout(90)
def test_the_demo_with_its_worker_in_a_separate_process(scheduler_endpoint: str) -> None:
    worker = start_worker_process(SCRIPT)
    try:
        seen = asyncio.run(sample.main(role="client"))
    finally:
        stop_worker_process(worker)
    assert seen["recall"] == "Your name is Alice." and seen["control"].startswith("I don't know your name")
    assert seen["retried"] == "Your favorite drink is tea."
    # Every record was enriched in the worker process, not here.
    assert {record.metadata["worker_id"].rsplit(":", 1)[1] for record in seen["records"]} == {str(worker.pid)}
    assert [record.metadata["sequence"] for record in seen["records"]] == list(range(1, 14))
    assert seen["status"]["duplicate_writes"] == 1 and seen["status"]["stats"]["activity_calls"] == 6
    assert [text_of(r.message) for r in seen["records"]].count("My favorite drink is tea.") == 1


@pytest.mark.timeout(90)
def test_the_script_runs_as_a_user_would_and_leaves_nothing_open(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, timeout=80, env={"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error::ResourceWarning"})
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr and "Traceback" not in result.stderr
    out = result.stdout
    assert out.startswith("Backends: model=offline model")
    assert "Agent: The weather in Seattle: sunny, 18 degrees Celsius (sample data for Seattle)." in out
    assert "User: My favorite drink is tea." in out and "Agent: Your favorite drink is tea." in out
    table = out.split("Diagnostics: the metadata")[1].split("Enriched by worker(s)")[0].splitlines()[2:]
    assert [int(line.split()[0]) for line in table] == list(range(1, 14))
    assert any("[call get_weather(" in line for line in table)
    assert all(line.endswith((".", "!", "?", "...", ")]")) for line in table), table  # no word cut in half


def test_help_runs_nothing_and_an_unknown_flag_is_refused(run_script_here: ScriptRunner) -> None:
    helped = run_script_here(SCRIPT, "--help")
    assert helped.returncode == 0 and "--role {all,worker,client}" in helped.stdout and "Backends:" not in helped.stdout
    assert "--timeout SECONDS" in helped.stdout
    refused = run_script_here(SCRIPT, "--role", "both")
    assert refused.returncode == 2 and "invalid choice: 'both'" in refused.stderr


@pytest.mark.timeout(120)
def test_the_activity_store_works_copied_alone_with_the_chat_stores_public_api(tmp_path: Path) -> None:
    """A reader copies durable_chat_history.py and the chat store's public API into their app under the same names,
    and the activity store (with the script's own import lines) next to them; nothing else comes along."""
    beside = {"durable_chat_history.py": ENGINE, "durable_task_chat_message_store.py": PUBLIC_API}
    run_standalone(tmp_path, SCRIPT, COPYABLE, EMBEDDED_SCHEDULER + STANDALONE_BODY, beside=beside)


STANDALONE_BODY = """
    import asyncio  # after EMBEDDED_SCHEDULER: `port`, `backend`
    from agent_framework import Message
    from durabletask.client import TaskHubGrpcClient
    from durabletask.worker import TaskHubGrpcWorker
    from copied import DurableTaskActivityChatMessageStore

    worker = TaskHubGrpcWorker(host_address=f"localhost:{port}")
    DurableTaskActivityChatMessageStore.register(worker)
    worker.start()
    client = TaskHubGrpcClient(host_address=f"localhost:{port}")

    async def round_trip():
        store = DurableTaskActivityChatMessageStore(client, writes_per_generation=2)
        for n in range(3):
            await store.save_messages("session-1", [Message("user", [f"m{n}"]), Message("assistant", [f"r{n}"])])
        assert len(await store.get_records("session-1")) == 6  # waits for its own writes
        records = await DurableTaskActivityChatMessageStore(client).get_records("session-1")  # a new store instance
        assert [record.message.text for record in records] == ["m0", "r0", "m1", "r1", "m2", "r2"]
        assert [record.metadata["sequence"] for record in records] == [1, 2, 3, 4, 5, 6]
        print("copied activity store: ok")

    try:
        asyncio.run(round_trip())
    finally:
        client.close()
        worker.stop()
        backend.stop(grace=0.5)
"""
