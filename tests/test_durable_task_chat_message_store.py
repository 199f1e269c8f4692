"""durable_task_chat_message_store.py: read-your-writes, restart recall, idempotent writes, the size budget."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from agent_framework import AgentSession, Content, Message
from durabletask.client import TaskHubGrpcClient

import durable_task_chat_message_store as sample
from durable_task_chat_message_store import (
    DurableTaskChatMessageStore,
    HistoryTooLarge,
    append,
    new_history_state,
    payload_bytes,
)
from sample_support import SchedulerBackend, select_model
from sample_support.durable_worker import StatusTimeout
from sample_support.offline_model import OfflineModelServer
from tests.conftest import ScriptRunner, start_worker_process, stop_worker_process, store_worker, unique

SCRIPT = "durable_task_chat_message_store.py"


def text_of(message: Message) -> str:
    return " ".join(content.text or "" for content in message.contents if content.type == "text")


def tool_exchange(number: int) -> list[Message]:
    """A user question, the assistant's tool call, the tool result and the answer, with unique message ids."""
    call_id = f"call-{number}"
    return [
        Message("user", [f"Question {number}: what's the weather?"], message_id=f"u{number}"),
        Message(
            "assistant",
            [Content.from_function_call(call_id=call_id, name="get_weather", arguments='{"location": "Seattle"}')],
            message_id=f"c{number}",
        ),
        Message("tool", [Content.from_function_result(call_id=call_id, result="sunny")], message_id=f"r{number}"),
        Message("assistant", [f"Answer {number}: it is sunny."], message_id=f"a{number}"),
    ]


def test_budget_and_interval_are_checked_against_the_scheduler_message_limit(client: TaskHubGrpcClient) -> None:
    with pytest.raises(ValueError, match="lower one of them"):
        DurableTaskChatMessageStore(client, writes_per_generation=20, history_budget_bytes=200_000)
    with pytest.raises(ValueError):
        DurableTaskChatMessageStore(client, writes_per_generation=0)
    DurableTaskChatMessageStore(client, writes_per_generation=4, history_budget_bytes=200_000)


def test_trimming_never_leaves_an_orphan_tool_result() -> None:
    """Writes without user messages (an agent talking to tools) are still trimmed, never cutting call from result."""
    budget = 1_500
    state = new_history_state(every=4, budget_bytes=budget)
    written: list[dict] = []
    for number in range(8):
        records = [message.to_dict() for message in tool_exchange(number)[1:]]  # call, result, answer
        written += records
        assert append(state, f"w{number}", {"messages": records})
        assert payload_bytes(state["messages"]) <= budget
        assert state["messages"][0]["role"] != "tool"
        assert state["messages"] == written[len(written) - len(state["messages"]) :]
        assert state["trimmed"] == len(written) - len(state["messages"])
    assert state["trimmed"] > 0


@pytest.fixture(scope="class")
def worker(scheduler: SchedulerBackend) -> Iterator[None]:
    with store_worker(scheduler, DurableTaskChatMessageStore.register):
        yield


@pytest.mark.usefixtures("worker")
class TestWithAWorker:
    @pytest.mark.timeout(60)
    def test_read_your_writes_across_continue_as_new(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("ryw")

        async def scenario() -> None:
            writer = DurableTaskChatMessageStore(client, writes_per_generation=2)
            for number in range(7):
                await writer.save_messages(session_id, [Message("user", [f"note {number}"])])
                # No sleep: get_messages itself waits until this store's last write is in the scheduler's state.
                messages = await writer.get_messages(session_id)
                assert [text_of(message) for message in messages] == [f"note {n}" for n in range(number + 1)]
            status = await writer.read_status(session_id)
            assert status is not None and status["generation"] == 3 and status["writes"] == 7
            # Two writes in flight at once (two agents sharing the store): the next read waits for both.
            await asyncio.gather(
                *(writer.save_messages(session_id, [Message("user", [f"together {n}"])]) for n in (1, 2))
            )
            together = [text_of(message) for message in (await writer.get_messages(session_id))[7:]]
            assert sorted(together) == ["together 1", "together 2"]
            reader = DurableTaskChatMessageStore(client)  # another process's view: it reads what is there
            assert len(await reader.get_messages(session_id)) == 9
            assert await reader.get_messages(unique("never-written")) == []

        asyncio.run(scenario())

    @pytest.mark.timeout(60)
    def test_restart_recalls_from_scheduler_state_and_a_new_session_does_not(
        self, scheduler: SchedulerBackend, offline_model: OfflineModelServer
    ) -> None:
        session_id, control_id = unique("alice"), unique("control")
        model = select_model()

        async def scenario() -> None:
            first_client = scheduler.client()
            store = DurableTaskChatMessageStore(first_client, writes_per_generation=2)
            agent = sample.new_agent(model, store)
            session = agent.create_session(session_id=session_id)
            await agent.run("My name is Alice.", session=session)
            await agent.run("I live in Paris.", session=session)
            first_client.close()

            restarted_client = scheduler.client()
            restarted = DurableTaskChatMessageStore(restarted_client, writes_per_generation=2)
            agent = sample.new_agent(model, restarted)
            name = await agent.run("What is my name?", session=AgentSession(session_id=session_id))
            place = await agent.run("Where do I live?", session=AgentSession(session_id=session_id))
            control = await agent.run("What is my name?", session=agent.create_session(session_id=control_id))
            assert "Alice" in name.text
            assert "Paris" in place.text
            assert "Alice" not in control.text
            status = await restarted.read_status(session_id)
            assert status is not None
            assert [message["role"] for message in status["messages"]] == ["user", "assistant"] * 4
            assert status["writes"] == 4 and status["generation"] == 2
            restarted_client.close()

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_a_retried_write_and_a_repeated_message_are_stored_once(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("dup")
        first, second, third = (Message("user", [f"m{n}"], message_id=f"m{n}") for n in range(3))

        async def scenario() -> None:
            store = DurableTaskChatMessageStore(client)
            await store.save_messages(session_id, [first, second], write_id="w1")
            await store.save_messages(session_id, [first, second], write_id="w1")  # a client retry
            await store.save_messages(session_id, [second, third], write_id="w2")  # `second` again, new write
            status = await store.read_status(session_id)
            assert status is not None
            assert [message["message_id"] for message in status["messages"]] == ["m0", "m1", "m2"]
            assert (status["writes"], status["duplicate_writes"], status["duplicate_messages"]) == (2, 1, 1)

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_an_oversize_write_is_refused_with_a_clear_error_and_nothing_is_lost(
        self, client: TaskHubGrpcClient
    ) -> None:
        session_id = unique("big")
        budget = 5_000
        oversize = Message("user", ["x" * 6_000])

        async def scenario() -> None:
            store = DurableTaskChatMessageStore(client, history_budget_bytes=budget)
            await store.save_messages(session_id, [Message("user", ["kept"])])
            with pytest.raises(HistoryTooLarge, match="nothing was stored"):
                await store.save_messages(session_id, [oversize])
            assert [text_of(message) for message in await store.get_messages(session_id)] == ["kept"]

            # A store with a larger budget sends it; the orchestration keeps its own budget and refuses it.
            lenient = DurableTaskChatMessageStore(client, history_budget_bytes=50_000)
            await lenient.save_messages(session_id, [oversize])
            with pytest.raises(HistoryTooLarge, match=f"over the history budget of {budget:,}"):
                await lenient.get_messages(session_id)
            await lenient.save_messages(session_id, [Message("user", ["after"])])
            assert [text_of(message) for message in await lenient.get_messages(session_id)] == ["kept", "after"]

        asyncio.run(scenario())
        state = client.get_orchestration_state(f"chat-history-{session_id}")
        assert state is not None and state.runtime_status.name == "RUNNING"

    @pytest.mark.timeout(30)
    def test_trimming_drops_the_oldest_exchanges_to_stay_within_the_budget(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("trim")
        budget = 3_000

        async def scenario() -> None:
            store = DurableTaskChatMessageStore(client, writes_per_generation=2, history_budget_bytes=budget)
            written: list[dict] = []
            for number in range(6):
                exchange = tool_exchange(number)
                written += [message.to_dict() for message in exchange]
                await store.save_messages(session_id, exchange)
                status = await store.read_status(session_id)
                assert status is not None
                kept = status["messages"]
                assert payload_bytes(kept) <= budget
                assert kept == written[len(written) - len(kept) :]  # the newest messages, in order
                assert kept[0]["role"] == "user"  # whole exchanges only
                assert status["trimmed"] == len(written) - len(kept)
                if status["trimmed"]:  # and no more than needed: the previous exchange would not fit
                    assert payload_bytes(written[len(written) - len(kept) - 4 :]) > budget
            assert status["trimmed"] > 0

        asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_without_a_worker_a_read_fails_with_a_clear_error_instead_of_hanging(client: TaskHubGrpcClient) -> None:
    session_id = unique("no-worker")

    async def scenario() -> None:
        store = DurableTaskChatMessageStore(client, read_timeout=1)
        await store.save_messages(session_id, [Message("user", ["hello"])])
        with pytest.raises(StatusTimeout, match="--role worker"):
            await store.get_messages(session_id)

    try:
        asyncio.run(scenario())
    finally:
        client.terminate_orchestration(f"chat-history-{session_id}", recursive=False)


@pytest.mark.timeout(90)
def test_the_demo_with_its_worker_in_a_separate_process_replaced_between_writes(
    scheduler_endpoint: str, client: TaskHubGrpcClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write raised while no worker runs is kept by the scheduler and applied once a worker is back."""
    session_id = unique("replaced-worker")
    store = DurableTaskChatMessageStore(client)

    async def texts() -> list[str]:
        return [text_of(message) for message in await store.get_messages(session_id)]

    worker = start_worker_process(SCRIPT)
    try:
        asyncio.run(store.save_messages(session_id, [Message("user", ["before"])]))
        assert asyncio.run(texts()) == ["before"]
    finally:
        stop_worker_process(worker)
    asyncio.run(store.save_messages(session_id, [Message("user", ["while stopped"])]))
    worker = start_worker_process(SCRIPT)
    try:
        assert asyncio.run(texts()) == ["before", "while stopped"]
        asyncio.run(sample.main(role="client"))
    finally:
        stop_worker_process(worker)
        client.terminate_orchestration(f"chat-history-{session_id}", recursive=False)
    output = capsys.readouterr().out
    restart = output.split("== 2. Restart")[1].split("== 3.")[0]
    control = output.split("== 3. Control")[1].split("== 4.")[0]
    assert "Agent: Your name is Alice." in restart and "Agent: You live in Paris." in restart
    assert "Alice" not in control.split("Agent:")[1]
    assert "duplicate_writes=1" in output.split("== 4.")[1].split("== 5.")[0]


def test_worker_role_without_a_configured_scheduler_is_a_one_line_error(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, "--role", "worker", timeout=30, env={"DTS_ENDPOINT": ""})  # blank counts as unset
    assert result.returncode == 1
    assert result.stderr.startswith("error: --role worker needs DTS_ENDPOINT") and result.stderr.count("\n") == 1


@pytest.mark.timeout(90)
def test_the_script_runs_as_a_user_would(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, timeout=80)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("Backends: model=offline model")
    restart = out.split("== 2. Restart")[1].split("== 3.")[0]
    assert "Agent: Your name is Alice." in restart and "Agent: You live in Paris." in restart
    assert "Agent: I don't know your name" in out.split("== 3. Control")[1].split("== 4.")[0]
    budget = out.split("== 5. The size budget")[1].split("== 6.")[0]
    assert "Refused:" in budget and "nothing was stored" in budget
    small = budget.split("drops its oldest exchanges")[1]
    assert "Agent: You live in Paris." in small  # the kept exchange still answers
    assert "Agent: I don't know your name" in small  # the trimmed one no longer does
    assert "trimmed=0" not in small.splitlines()[-1]
    held = out.split("== 6.")[1]
    assert "RUNNING" in held and "duplicate_writes=1" in held
    assert [line.split(".")[0].strip() for line in held.splitlines()[2:13]] == [str(n) for n in range(1, 12)]
    assert "Ended the demo's history orchestrations" in out
