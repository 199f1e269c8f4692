"""durable_task_activity_chat_message_store.py: metadata for every message, contiguous sequence numbers,
idempotent enrichment, the size budget, and the demo with its worker in another process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import pytest
from agent_framework import Agent, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from durabletask import task
from durabletask.client import TaskHubGrpcClient

import durable_task_activity_chat_message_store as sample
from durable_task_activity_chat_message_store import (
    DurableTaskActivityChatMessageStore,
    enrich_chat_records,
)
from durable_task_chat_message_store import HistoryTooLarge, append, new_messages, payload_bytes
from sample_support import SchedulerBackend, select_model
from sample_support.offline_model import OfflineModelServer
from tests.conftest import ScriptRunner, start_worker_process, stop_worker_process, store_worker, unique
from tests.test_durable_task_chat_message_store import tool_exchange

SCRIPT = "durable_task_activity_chat_message_store.py"


def test_rerunning_the_activity_with_the_same_input_adds_nothing(client: TaskHubGrpcClient) -> None:
    """At-least-once delivery: a second run returns the same records, and applying them again stores nothing."""
    store = DurableTaskActivityChatMessageStore(client)
    state = store.initial_state()
    write = {"write_id": "w1", "messages": [message.to_dict() for message in tool_exchange(1)], "first_sequence": 1}
    first = enrich_chat_records(task.ActivityContext("orchestration", 1), write)
    again = enrich_chat_records(task.ActivityContext("orchestration", 2), write)
    assert first["messages"] == again["messages"] == write["messages"]
    for field in ("sequence", "message_id", "write_id", "role", "author", "content_types", "size_bytes"):
        assert [record[field] for record in first["metadata"]] == [record[field] for record in again["metadata"]]

    assert append(state, "w1", first)
    assert new_messages(state, write) is None  # the same write id: nothing to enrich
    assert new_messages(state, {**write, "write_id": "w2"}) == []  # the same messages under a new write id
    assert len(state["messages"]) == len(state["metadata"]) == 4
    assert (state["duplicate_writes"], state["duplicate_messages"]) == (1, 4)


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
            agent = Agent(
                client=OpenAIChatCompletionClient(**select_model().client_kwargs()),
                name="Researcher",
                tools=[get_weather],
                context_providers=[store],
            )
            session = agent.create_session(session_id=session_id)
            await agent.run("My name is Alice.", session=session)
            weather = await agent.run("What's the weather in Seattle?", session=session)
            name = await agent.run("What is my name?", session=session)
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
                assert meta["size_bytes"] == payload_bytes(stored)
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
            for number in range(6):
                await store.save_messages(session_id, tool_exchange(number))
                records = await store.get_records(session_id)  # raises if messages and metadata ever disagree
                status = await store.read_status(session_id)
                assert status is not None
                assert payload_bytes({"messages": status["messages"], "metadata": status["metadata"]}) <= budget
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


@pytest.mark.timeout(90)
def test_the_demo_with_its_worker_in_a_separate_process(
    scheduler_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = start_worker_process(SCRIPT)
    try:
        asyncio.run(sample.main(role="client"))
    finally:
        stop_worker_process(worker)
    output = capsys.readouterr().out
    assert "Agent: Your name is Alice." in output.split("== 2. Restart")[1].split("== 3.")[0]
    worker_line = next(line for line in output.splitlines() if line.startswith("Enriched by worker(s):"))
    assert worker_line.endswith(f":{worker.pid}")  # the records were enriched in the worker process, not here


@pytest.mark.timeout(90)
def test_the_script_runs_as_a_user_would(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, timeout=80)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("Backends: model=offline model")
    assert "Agent: The weather in Seattle" in out.split("== 2.")[0]
    assert "Agent: Your name is Alice." in out.split("== 2. Restart")[1].split("== 3.")[0]
    assert "Agent: I don't know your name" in out.split("== 3. Control")[1].split("== 4.")[0]
    table = out.split("== 5. Diagnostics")[1].split("Enriched by worker(s)")[0].splitlines()[2:-1]
    assert [int(line.split()[0]) for line in table] == list(range(1, len(table) + 1))
    assert any("[call get_weather(" in line for line in table)
    assert "activity_calls=5" in out.split("== 4.")[1] and "duplicate_writes=1" in out.split("== 4.")[1]
    assert "Ended the demo's history orchestrations" in out
