"""durable_task_chat_message_store.py (and durable_chat_history.py, its orchestration's state): read-your-writes,
restart recall, idempotent writes, the size budget, the incremental append, summaries instead of trimming (recall, its
negative control, a failing summarizer), ids, foreign, corrupt or newer histories and records, two writers at once,
the copy-paste check, the script and its roles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from agent_framework import Agent, AgentSession, ChatResponse, Content, Message, tool
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient

import durable_task_chat_message_store as sample
from durable_chat_history import ChatHistory, ChatHistoryError, HistoryTimeout, HistoryTooLarge, InvalidArgument
from durable_task_chat_message_store import DurableTaskChatMessageStore, chat_history_orchestrator
from sample_support import SchedulerBackend, select_model
from sample_support.durable_worker import add_role_arguments
from sample_support.offline_model import OfflineModelServer
from tests.conftest import ScriptRunner, start_worker_process, stop_worker_process, unique
from tests.model_probe import ModelProbe
from tests.standalone import EMBEDDED_SCHEDULER, run_standalone

SCRIPT = "durable_task_chat_message_store.py"
# durable_chat_history.py, copied whole beside a copied store: the orchestration's state, its steps, the errors.
ENGINE = ("SCHEMA_VERSION", "ChatHistoryError", "InvalidArgument", "HistoryTooLarge", "HistoryTimeout", "ChatHistory")
# What the activity and multi-agent samples may import from this script; the rest comes from durable_chat_history.
PUBLIC_API = ("ENDED", "chat_history_orchestrator", "DurableTaskChatMessageStore")


class NewerMessage(Message):
    """A message as a newer framework or store version might write it: a field this version does not know."""

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().to_dict(**kwargs), "type": "message", "schema_version": 2}


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


def stored_tool_results_have_their_calls(records: list[dict[str, Any]]) -> bool:
    calls = {c["call_id"] for record in records for c in record["contents"] if c["type"] == "function_call"}
    results = [c["call_id"] for record in records for c in record["contents"] if c["type"] == "function_result"]
    return all(call_id in calls for call_id in results)


@tool(approval_mode="never_require")
def get_weather(location: str) -> str:
    """The weather at a location."""
    return f"It is sunny in {location}."


def every_content_type() -> list[Message]:
    """One message per content type the framework has, with author names, ids and unicode."""
    call = Content.from_function_call(call_id="call-7", name="lookup", arguments='{"q": "naïve café ☕"}')
    return [
        Message("user", ["Grüße, 你好, emoji 🎉"], author_name="Zoë", message_id="m-text"),
        Message("assistant", [call], author_name="Assistant", message_id="m-call"),
        Message("tool", [Content.from_function_result(call_id="call-7", result={"ok": True})], message_id="m-result"),
        Message("assistant", [Content.from_error(message="boom", error_code="E1")], message_id="m-error"),
        Message(
            "user", [Content.from_uri(uri="https://example.com/a.png", media_type="image/png")], message_id="m-uri"
        ),
        Message("user", [Content.from_data(data=b"\x00\x01binary", media_type="application/octet-stream")]),
        Message("assistant", [Content.from_usage({"input_token_count": 3, "output_token_count": 5})], message_id="m-u"),
    ]


# --- The orchestrator's state, without a scheduler -----------------------------------------------------------------


def test_constructor_refuses_settings_that_are_not_positive_integers_or_could_pass_the_message_limit(
    client: TaskHubGrpcClient,
) -> None:
    with pytest.raises(InvalidArgument, match="lower one"):
        DurableTaskChatMessageStore(client, writes_per_generation=20, history_budget_bytes=200_000)
    for bad in (0, -1, 1e30, 2.5, True, "4", None):
        with pytest.raises(ValueError):  # InvalidArgument is a ValueError
            DurableTaskChatMessageStore(client, writes_per_generation=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            DurableTaskChatMessageStore(client, history_budget_bytes=bad)  # type: ignore[arg-type]
    for bad_timeout in (0, -1.0, float("nan")):
        with pytest.raises(InvalidArgument):
            DurableTaskChatMessageStore(client, read_timeout=bad_timeout)
    DurableTaskChatMessageStore(client, writes_per_generation=4, history_budget_bytes=200_000)
    DurableTaskChatMessageStore(client, writes_per_generation=4, history_budget_bytes=200_000, summarize=True)
    DurableTaskChatMessageStore(client, writes_per_generation=5, history_budget_bytes=200_000)
    with pytest.raises(InvalidArgument, match="lower one"):  # a summary's input and result travel in the work item too
        DurableTaskChatMessageStore(client, writes_per_generation=5, history_budget_bytes=200_000, summarize=True)


def test_a_record_this_version_cannot_read_is_refused_with_its_whole_write() -> None:
    """The orchestrator parses each new record (deterministic, no I/O): a record that every later read would fail on
    is refused with its write, which a waiting reader then sees with the reason; nothing of the write is kept."""
    history = ChatHistory(ChatHistory.new(every=4, budget_bytes=200_000))
    good = {**Message("user", ["good"]).to_dict(), "message_id": "g1"}
    newer = NewerMessage("user", ["from the future"], message_id="future").to_dict()
    unknown_content = {**good, "message_id": "c1", "contents": [{"type": "text", "text": "x", "colour": "red"}]}
    not_a_content = {**good, "message_id": "l1", "contents": [[1, 2]]}  # from_dict raises AttributeError
    for number, record in enumerate((newer, unknown_content, not_a_content)):
        assert ChatHistory.is_record(record)  # shaped like a message: only parsing it finds the problem
        assert history.new_messages({"write_id": f"w{number}", "messages": [good, record]}) is None
    assert history.state["messages"] == [] and history.state["duplicate_messages"] == 0
    reasons = [(entry["write_id"], entry["reason"]) for entry in history.state["rejected"]]
    assert reasons == [
        ("w0", "message 'future' is not one this version reads (Message.__init__() got an unexpected keyword "
         "argument 'schema_version')"),
        ("w1", "message 'c1' is not one this version reads (Content.__init__() got an unexpected keyword argument "
         "'colour')"),
        ("w2", "message 'l1' is not one this version reads ('list' object has no attribute 'get')"),
    ]  # fmt: skip
    assert history.new_messages({"write_id": "w0", "messages": [good]}) is None  # a retry of a refused write
    assert history.new_messages({"write_id": "w3", "messages": [good]}) == [good]


def test_a_stored_record_this_version_cannot_read_is_an_error_naming_the_session_not_a_type_error() -> None:
    good = {**Message("user", ["good"]).to_dict(), "message_id": "g1"}
    newer = NewerMessage("user", ["from the future"], message_id="future").to_dict()
    assert [message.text for message in ChatHistory.to_messages("s-1", [good])] == ["good"]
    with pytest.raises(ChatHistoryError) as error:
        ChatHistory.to_messages("s-1", [good, newer])
    assert str(error.value) == (
        "session 's-1': stored message 2 ('future') is not one this version reads (Message.__init__() got an "
        "unexpected keyword argument 'schema_version'); read_status() still returns every stored record"
    )


def test_trimming_never_leaves_an_orphan_tool_result() -> None:
    """Writes without user messages (an agent talking to tools) are still trimmed, never cutting call from result."""
    budget = 1_500
    history = ChatHistory(ChatHistory.new(every=4, budget_bytes=budget))
    state, written = history.state, []
    for number in range(8):
        records = [message.to_dict() for message in tool_exchange(number)[1:]]  # call, result, answer
        written += records
        assert history.append(f"w{number}", {"messages": records})
        assert ChatHistory.size(state["messages"]) <= budget
        assert state["messages"][0]["role"] != "tool"
        assert state["messages"] == written[len(written) - len(state["messages"]) :]
        assert state["trimmed"] == len(written) - len(state["messages"])
    assert state["trimmed"] > 0


def test_summaries_replace_whole_oldest_exchanges_and_a_failed_one_keeps_the_earlier_summary() -> None:
    """The orchestrator's steps with summarize=True, the summaries written here: the oldest whole exchanges (the
    earlier summary first, never the newest write) become one summary that leaves half the budget; a summary that
    failed or does not fit is counted, the exchanges are trimmed instead, and the earlier summary stays first."""
    budget, written = 3_000, 0
    history = ChatHistory(ChatHistory.new(every=4, budget_bytes=budget, summarize=True))
    state = history.state

    def write(number: int, summary: str | None) -> list[dict[str, Any]]:
        nonlocal written
        records = [message.to_dict() for message in tool_exchange(number)]
        written += len(records)
        assert history.add(f"w{number}", {"messages": records})
        if older := history.to_summarize(keep=len(records)):
            assert older == state["messages"][: len(older)] and state["messages"][len(older)]["role"] == "user"
            assert len(older) <= len(state["messages"]) - len(records)  # the newest write stays as it is
            if summary is None:
                history.summary_failed("the model is down")
            else:
                history.summarized(f"w{number}", len(older), summary)
        history.trim()
        assert state["bytes"] == sum(ChatHistory.size([row]) for row in state["messages"]) <= budget
        assert stored_tool_results_have_their_calls(state["messages"])
        return older

    # Each exchange is 915 bytes: the 4th write passes 3,000 and a summary leaves ~1,100, so the 7th passes it again.
    summarized = [bool(write(number, f"summary {number}")) for number in range(7)]
    assert summarized == [False, False, False, True, False, False, True]
    kept = len(state["messages"]) - 1
    assert (state["summaries"], state["summary_failures"], state["trimmed"]) == (2, 0, 0)
    assert state["messages"][0]["contents"][0]["text"] == "summary 6"
    assert state["messages"][0]["message_id"] == state["summary_id"] == "summary-w6"
    assert state["summarized"] == written - kept == 24  # every original no longer kept was summarised, none dropped
    earlier = state["messages"][0]
    for number in range(7, 11):  # the summarizer fails: whole exchanges are trimmed, the earlier summary kept
        write(number, None)
        assert state["messages"][0] == earlier and state["messages"][1]["role"] == "user"
    assert state["summary_failures"] == 2 and state["trimmed"] == 8 and state["summary_error"] == "the model is down"
    assert write(11, "x" * budget)  # a summary over the budget is not stored
    assert state["summary_failures"] == 3 and "leaves the history over its budget" in state["summary_error"]
    assert state["messages"][0] == earlier and state["summaries"] == 2


def reference_trim(rows: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The rule as the store stated it before the running total: size every kept row, cut at whole exchanges."""
    sizes = [ChatHistory.size([row]) for row in rows]
    total, cut = sum(sizes), 0
    while total > budget:
        later = range(cut + 1, len(rows))
        next_cut = next((i for i in later if rows[i]["role"] == "user"), None)
        next_cut = next_cut or next((i for i in later if rows[i]["role"] != "tool"), None)
        if next_cut is None:
            break
        total, cut = total - sum(sizes[cut:next_cut]), next_cut
    return rows[cut:]


def test_the_running_byte_total_keeps_what_sizing_the_whole_history_kept() -> None:
    budget, reference = 6_000, []
    history = ChatHistory(ChatHistory.new(every=4, budget_bytes=budget))
    for number in range(60):  # a mix of plain and tool-calling exchanges of varying size
        exchange = tool_exchange(number) if number % 3 else [Message("user", ["x" * (37 * number % 900)])]
        records = [{**message.to_dict(), "message_id": f"{number}-{i}"} for i, message in enumerate(exchange)]
        assert history.append(f"w{number}", {"messages": records})
        reference = reference_trim(reference + records, budget)
        assert history.state["messages"] == reference
        assert history.state["bytes"] == sum(ChatHistory.size([row]) for row in reference)
    assert history.state["trimmed"] > 100


def test_an_append_sizes_only_its_new_rows_and_a_replay_publishes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No re-serialising the whole history per write: at 2,000 stored messages an append sizes its 2 new rows."""
    history = ChatHistory(ChatHistory.new(every=4, budget_bytes=10_000_000))
    history.append(
        "prefill", {"messages": [{**Message("user", [f"m{n}"]).to_dict(), "message_id": f"m{n}"} for n in range(2_000)]}
    )
    sized: list[Any] = []
    original = ChatHistory.size
    monkeypatch.setattr(ChatHistory, "size", staticmethod(lambda value: sized.append(value) or original(value)))
    new = [
        {**Message("user", ["new"]).to_dict(), "message_id": "n1"},
        {**Message("assistant", ["ok"]).to_dict(), "message_id": "n2"},
    ]
    assert history.append("w", {"messages": new})
    assert len(sized) == 3  # the write as a whole (the budget check), then each of its two rows
    assert len(history.state["messages"]) == 2_002

    class Context:  # the part of an orchestration context the orchestrator uses
        def __init__(self, replayed: int) -> None:
            self.replayed, self.published = replayed, 0

        @property
        def is_replaying(self) -> bool:
            return self.replayed > 0

        def set_custom_status(self, status: Any) -> None:
            self.published += 1

        def wait_for_external_event(self, name: str) -> str:
            self.replayed -= 1
            return name

        def continue_as_new(self, state: Any, save_events: bool) -> None:
            pass

    def run_generation(replayed: int) -> int:
        """Drive one generation of three writes, the first `replayed` events as a replay; count the publishes."""
        context = Context(replayed)
        steps = chat_history_orchestrator(context, ChatHistory.new(every=3, budget_bytes=10_000))  # type: ignore[arg-type]
        next(steps)
        for number in range(3):
            with contextlib.suppress(StopIteration):
                steps.send({"write_id": f"w{number}", "messages": [{**new[0], "message_id": f"m{number}"}]})
        return context.published

    assert run_generation(replayed=3) == 1  # the start and two writes replayed: only the new write serialises
    assert run_generation(replayed=0) == 4  # nothing replayed: the start and each write publish


# --- With a worker on the test scheduler ----------------------------------------------------------------------------


class Summarizer:
    """The worker's summarizer: the offline model through a real chat client, or (`failing`) a model that is down."""

    def __init__(self) -> None:
        self.chat_client, self.failing = sample.OpenAIChatCompletionClient(**select_model().client_kwargs()), False

    async def get_response(self, messages: Sequence[Message], **kwargs: Any) -> ChatResponse[Any]:
        if self.failing:
            raise ConnectionError("the summarizer's model is down")
        return await self.chat_client.get_response(messages, **kwargs)


@pytest.fixture(scope="class")
def worker(scheduler: SchedulerBackend) -> Iterator[Summarizer]:
    """A worker with the store's orchestrator and summary activity; the summaries run on an event loop of their own,
    as `register` asks: the loop it is called on, running until the worker has stopped."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    summarizer, worker = Summarizer(), scheduler.worker()

    async def register() -> None:
        DurableTaskChatMessageStore.register(worker, summarizer=summarizer)

    asyncio.run_coroutine_threadsafe(register(), loop).result()
    worker.start()
    yield summarizer
    worker.stop()
    asyncio.run_coroutine_threadsafe(summarizer.chat_client.client.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


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

        async def scenario() -> None:
            chat_client = sample.OpenAIChatCompletionClient(**select_model().client_kwargs())
            first_client = scheduler.client()
            store = DurableTaskChatMessageStore(first_client, writes_per_generation=2)
            agent = sample.new_agent(chat_client, store)
            session = agent.create_session(session_id=session_id)
            await agent.run("My name is Alice.", session=session)
            await agent.run("I live in Paris.", session=session)
            first_client.close()

            restarted_client = scheduler.client()
            restarted = DurableTaskChatMessageStore(restarted_client, writes_per_generation=2)
            agent = sample.new_agent(chat_client, restarted)
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
            await chat_client.client.close()

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
            with pytest.raises(HistoryTooLarge, match="history budget of 200,000 bytes"):  # a 1 MB message
                await DurableTaskChatMessageStore(client).save_messages(session_id, [Message("user", ["y" * 2**20])])
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
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING

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
                assert ChatHistory.size(kept) <= budget
                assert kept == written[len(written) - len(kept) :]  # the newest messages, in order
                assert kept[0]["role"] == "user"  # whole exchanges only
                assert status["trimmed"] == len(written) - len(kept)
                assert status["bytes"] == sum(ChatHistory.size([row]) for row in kept)
                if status["trimmed"]:  # and no more than needed: the previous exchange would not fit
                    assert ChatHistory.size(written[len(written) - len(kept) - 4 :]) > budget
            assert status["trimmed"] > 0

        asyncio.run(scenario())

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("summarize", [True, False])
    def test_with_summaries_a_fact_told_first_is_recalled_long_after_it_left_the_budget(
        self, client: TaskHubGrpcClient, offline_model: ModelProbe, summarize: bool
    ) -> None:
        """Through a real agent with a tool: the name told first, then turns that push the history past 2,000 bytes
        again and again. With summaries the name survives only in the summary (its message is gone); without them
        (the negative control) it is forgotten. The strict offline endpoint sees no tool result without its call."""
        session_id, budget = unique("summaries" if summarize else "trimmed"), 2_000
        turns = ["My name is Alice.", "I live in Paris.", "What is the weather in Seattle?", "Tell me a joke."]
        turns += ["My favorite color is blue.", "What is the weather in Oslo?", "Where do I live?"] * 2
        summaries_before, calls_before = len(offline_model.summaries_written()), len(offline_model.tool_calls_emitted())

        async def scenario() -> tuple[str, dict[str, Any]]:
            chat_client = sample.OpenAIChatCompletionClient(**select_model().client_kwargs())
            store = DurableTaskChatMessageStore(client, history_budget_bytes=budget, summarize=summarize)
            agent = Agent(client=chat_client, tools=[get_weather], context_providers=[store])
            try:
                for text in turns:
                    await agent.run(text, session=AgentSession(session_id=session_id))
                    status = await store.read_status(session_id)
                    assert status is not None and status["bytes"] <= budget
                    assert stored_tool_results_have_their_calls(status["messages"])
                answer = await agent.run("What is my name?", session=AgentSession(session_id=session_id))
                return answer.text, await store.read_status(session_id) or {}
            finally:
                await chat_client.client.close()

        answer, status = asyncio.run(scenario())
        texts = [content.get("text") for message in status["messages"] for content in message["contents"]]
        assert "My name is Alice." not in texts  # the message that told it left the history long ago
        assert status["writes"] == len(turns) + 1 and status["rejected"] == []
        places = [arguments["location"] for _, arguments in offline_model.tool_calls_emitted()[calls_before:]]
        assert places == ["Seattle", "Oslo", "Oslo"]  # the tool really ran: call and result were stored
        summaries = offline_model.summaries_written()[summaries_before:]
        if summarize:
            assert answer == "Your name is Alice."
            assert status["summaries"] >= 2 and status["summary_failures"] == 0 and status["trimmed"] == 0
            assert len(summaries) == status["summaries"]
            assert all("the user's name is Alice" in summary for summary in summaries)
            assert status["messages"][0]["contents"][0]["text"] == summaries[-1]
            assert status["summarized"] > 10
        else:
            assert answer.startswith("I don't know your name") and summaries == []
            assert "summaries" not in status and status["trimmed"] > 10

    @pytest.mark.timeout(60)
    def test_a_failing_summarizer_falls_back_to_trimming_and_the_earlier_summary_carries_on(
        self, client: TaskHubGrpcClient, worker: Summarizer
    ) -> None:
        session_id, budget = unique("failing-summarizer"), 1_500
        store = DurableTaskChatMessageStore(
            client, writes_per_generation=3, history_budget_bytes=budget, summarize=True
        )
        count = 0

        async def exchange(text: str) -> dict[str, Any]:
            nonlocal count
            count += 1
            said = [
                Message("user", [text], message_id=f"u{count}"),
                Message("assistant", ["Noted."], message_id=f"a{count}"),
            ]
            await store.save_messages(session_id, said)
            return await store.read_status(session_id) or {}

        async def scenario() -> None:
            status = await exchange("My name is Alice.")
            while status["summaries"] == 0:
                status = await exchange(f"Note {count}.")
            earlier = status["messages"][0]
            assert "the user's name is Alice" in earlier["contents"][0]["text"]
            worker.failing = True
            try:
                for _ in range(6):
                    status = await exchange(f"Note {count}.")
            finally:
                worker.failing = False
            assert status["summary_failures"] >= 1 and status["trimmed"] > 0 and status["summaries"] == 1
            assert status["summary_error"].startswith("the summary activity failed: no summary of")
            assert status["messages"][0] == earlier and status["messages"][1]["role"] == "user"
            assert status["writes"] == count and status["rejected"] == [] and status["bytes"] <= budget
            while status["summaries"] == 1:  # the model is back: the next summary carries the name on
                status = await exchange(f"Note {count}.")
            assert "the user's name is Alice" in status["messages"][0]["contents"][0]["text"]

        asyncio.run(scenario())
        state = client.get_orchestration_state(store.instance_id(session_id))
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING

    @pytest.mark.timeout(30)
    def test_every_content_type_round_trips(self, client: TaskHubGrpcClient) -> None:
        session_id = unique("contents")
        written = every_content_type()

        async def scenario() -> None:
            await DurableTaskChatMessageStore(client).save_messages(session_id, written, write_id="w-all")
            loaded = await DurableTaskChatMessageStore(client).get_messages(session_id)  # a fresh store: a restart
            while not loaded:
                loaded = await DurableTaskChatMessageStore(client).get_messages(session_id)
            expected = [message.to_dict() for message in written]
            expected[5]["message_id"] = "w-all-5"  # the store names a message that had no id
            assert [message.to_dict() for message in loaded] == expected

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_hostile_ids_and_source_ids_each_get_their_own_history(self, client: TaskHubGrpcClient) -> None:
        run = unique("ids")
        hostile = [
            f"{run}/../x",
            f"{run}%2F..%2Fx",
            f"{run}'\"; DROP",
            f"{run}:a*?[",
            f"{run} ünï 你好",
            f"{run}\n\x00",
        ]

        async def scenario() -> None:
            store, audit = DurableTaskChatMessageStore(client), DurableTaskChatMessageStore(client, source_id="audit")
            assert len({store.instance_id(each) for each in hostile} | {audit.instance_id(hostile[0])}) == 7
            for each in hostile:
                await store.save_messages(each, [Message("user", [each])])
            await audit.save_messages(hostile[0], [Message("user", ["audit only"])])
            for each in hostile:
                assert [text_of(message) for message in await store.get_messages(each)] == [each]
            assert [text_of(message) for message in await audit.get_messages(hostile[0])] == ["audit only"]

        asyncio.run(scenario())

    @pytest.mark.timeout(30)
    def test_another_orchestration_under_the_id_is_a_clear_error_not_a_key_error(
        self, client: TaskHubGrpcClient
    ) -> None:
        session_id = unique("foreign")
        store = DurableTaskChatMessageStore(client)
        instance_id = store.instance_id(session_id)
        client.schedule_new_orchestration("another_samples_orchestrator", input={"turns": []}, instance_id=instance_id)
        try:
            for attempt in (store.get_messages(session_id), store.save_messages(session_id, [Message("user", ["x"])])):
                with pytest.raises(ChatHistoryError, match=rf"session '{session_id}'.*'another_samples_orchestrator'"):
                    asyncio.run(attempt)
        finally:
            client.terminate_orchestration(instance_id, recursive=False)

    @pytest.mark.timeout(30)
    def test_a_newer_schema_a_corrupt_record_and_a_malformed_event_are_errors_naming_the_session(
        self, client: TaskHubGrpcClient
    ) -> None:
        store = DurableTaskChatMessageStore(client)
        newer, corrupt, malformed = unique("newer"), unique("corrupt"), unique("malformed")
        newer_record, newer_write = unique("newer-record"), unique("newer-write")
        good = {**Message("user", ["good"]).to_dict(), "message_id": "g1"}
        future = NewerMessage("user", ["from the future"], message_id="future").to_dict()
        states = {
            newer: {**ChatHistory.new(4, 200_000), "schema": 2, "messages": [good]},
            corrupt: {**ChatHistory.new(4, 200_000), "messages": [good, {"role": 5, "contents": "x"}]},
            newer_record: {**ChatHistory.new(4, 200_000), "messages": [good, future]},  # stored by an older worker
        }
        for session_id, state in states.items():
            client.schedule_new_orchestration(
                chat_history_orchestrator, input=state, instance_id=store.instance_id(session_id)
            )

        async def scenario() -> None:
            with pytest.raises(ChatHistoryError, match=rf"session '{newer}'.*schema 2, this store reads 1"):
                await until_published(store, newer)
            with pytest.raises(ChatHistoryError, match=rf"session '{corrupt}'.*corrupt"):
                await until_published(store, corrupt)
            await until_published(store, newer_record)
            with pytest.raises(ChatHistoryError, match=rf"^session '{newer_record}': stored message 2 \('future'\)"):
                await store.get_messages(newer_record)
            status = await store.read_status(newer_record)  # the raw records stay readable
            assert status is not None and status["messages"] == [good, future]
            # A store on a newer framework writes a record this worker cannot read: refused, the writer told why.
            await store.save_messages(newer_write, [Message("user", ["before"])])
            await store.save_messages(newer_write, [NewerMessage("user", ["from the future"], message_id="future")])
            refused = rf"^session '{newer_write}': write \w+ was not stored: message 'future' is not one this version"
            with pytest.raises(ChatHistoryError, match=refused + r" reads \(.*'schema_version'\)$"):
                await store.get_messages(newer_write)
            assert [text_of(message) for message in await store.get_messages(newer_write)] == ["before"]
            # An event that is not a write of this store is refused by the orchestration, which keeps running.
            await store.save_messages(malformed, [Message("user", ["before"])])
            event = {"write_id": "w-bad", "messages": [{"role": 5}]}
            client.raise_orchestration_event(store.instance_id(malformed), ChatHistory.APPEND_EVENT, data=event)
            client.raise_orchestration_event(store.instance_id(malformed), ChatHistory.APPEND_EVENT, data="garbage")
            await store.save_messages(malformed, [Message("user", ["after"])])
            assert [text_of(message) for message in await store.get_messages(malformed)] == ["before", "after"]
            status = await store.read_status(malformed)
            assert status is not None and [entry["write_id"] for entry in status["rejected"]] == ["w-bad"]

        try:
            asyncio.run(scenario())
            state = client.get_orchestration_state(store.instance_id(malformed))
            assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
        finally:
            for session_id in (newer, corrupt, malformed, newer_record, newer_write):
                client.terminate_orchestration(store.instance_id(session_id), recursive=False)

    @pytest.mark.timeout(60)
    def test_two_writers_at_once_lose_nothing_and_each_write_stays_contiguous(
        self, scheduler: SchedulerBackend
    ) -> None:
        session_id = unique("two-writers")
        clients = [scheduler.client(), scheduler.client()]

        async def writer(number: int) -> None:
            store = DurableTaskChatMessageStore(clients[number], writes_per_generation=3)
            for write in range(8):
                batch = [Message("user", [f"writer {number} write {write} part {part}"]) for part in range(3)]
                await store.save_messages(session_id, batch)
            assert len(await store.get_messages(session_id)) >= 24  # its own writes, at least

        async def scenario() -> list[str]:
            await asyncio.gather(writer(0), writer(1))
            return [
                text_of(message) for message in await DurableTaskChatMessageStore(clients[0]).get_messages(session_id)
            ]

        try:
            texts = asyncio.run(scenario())
        finally:
            for each in clients:
                each.close()
        assert sorted(texts) == sorted(
            f"writer {n} write {w} part {p}" for n in (0, 1) for w in range(8) for p in range(3)
        )
        for start in range(0, 48, 3):  # every write's three messages are next to each other, in order
            assert [text.rsplit(" part ", 1) for text in texts[start : start + 3]] == [
                [texts[start].rsplit(" part ", 1)[0], str(part)] for part in range(3)
            ]


async def until_published(store: DurableTaskChatMessageStore, session_id: str) -> None:
    """Read until the orchestration has published its (here: unreadable) status, bounded by the test's timeout."""
    while await store.read_status(session_id) is None:
        await asyncio.sleep(0.01)


# --- Ids, waiting without a worker, the worker in another process ---------------------------------------------------


def test_session_ids_are_checked_before_anything_is_sent(client: TaskHubGrpcClient) -> None:
    store = DurableTaskChatMessageStore(client)
    cases = {
        "": "needs a session id",
        None: "needs a session id",
        "\udcff": "not valid UTF-8",
        "x" * 10_000: "too long",
    }
    for session_id, message in cases.items():
        for attempt in (store.get_messages(session_id), store.save_messages(session_id, [Message("user", ["x"])])):
            with pytest.raises(InvalidArgument, match=message) as refused:
                asyncio.run(attempt)
            assert "\n" not in str(refused.value) and len(str(refused.value)) < 200
    assert store.instance_id("alice-1") == "chat-history-alice-1"  # plain ids read as themselves


@pytest.mark.timeout(30)
def test_without_a_worker_a_read_fails_with_a_clear_error_instead_of_hanging(client: TaskHubGrpcClient) -> None:
    session_id = unique("no-worker")
    said: list[str] = []

    async def read(store: DurableTaskChatMessageStore, session: str, names: str) -> None:
        await store.save_messages(session, [Message("user", ["hello"])])
        with pytest.raises(HistoryTimeout, match=f"session '{session}'.* a worker with {names} running"):
            await store.get_messages(session)

    async def scenario() -> None:
        store = DurableTaskChatMessageStore(client, read_timeout=1.5, on_waiting=said.append)
        # A summarizing store also needs the worker's summary activity: the error names both.
        summarizing = DurableTaskChatMessageStore(client, read_timeout=1.5, summarize=True)
        both = "chat_history_orchestrator and summarize_history"
        await asyncio.gather(read(store, session_id, "chat_history_orchestrator"), read(summarizing, other, both))

    other = unique("no-worker-summarizing")
    try:
        asyncio.run(scenario())
    finally:
        for each in (session_id, other):
            client.terminate_orchestration(f"chat-history-{each}", recursive=False)
    assert said == [f"a worker with chat_history_orchestrator to apply the writes to session '{session_id}'"]


@pytest.mark.timeout(60)
def test_client_role_without_a_worker_says_it_waits_then_fails_in_one_line_naming_the_worker_command(
    scheduler_endpoint: str, run_script_here: ScriptRunner
) -> None:
    result = run_script_here(SCRIPT, "--role", "client", "--timeout", "2")  # it says it waits after 1 s
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("Waiting for a worker with chat_history_orchestrator") == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: session 'alice-")
    assert result.stderr.rstrip().endswith(f"Start one: python {SCRIPT} --role worker")


@pytest.mark.timeout(90)
def test_the_demo_with_its_worker_in_a_separate_process_replaced_between_writes(
    scheduler_endpoint: str, client: TaskHubGrpcClient
) -> None:
    """A write raised while no worker runs is kept by the scheduler and applied once a worker is back; then the demo's
    client against that worker process: recall after a restart, a retry stored once, whole exchanges trimmed."""
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
        seen = asyncio.run(sample.main(role="client"))
    finally:
        stop_worker_process(worker)
        client.terminate_orchestration(f"chat-history-{session_id}", recursive=False)
    assert seen["recall"] == ["Your name is Alice.", "You live in Paris."]
    assert "Alice" not in seen["control"] and seen["control"].startswith("I don't know your name")
    assert seen["retried"] == "Your favorite drink is tea."
    held = [message["contents"][0]["text"] for message in seen["status"]["messages"]]
    assert held.count("My favorite drink is tea.") == 1 and len(held) == 13  # 6 turns of 2, and the note once
    assert seen["status"]["duplicate_writes"] == 1
    assert "history budget of 200,000 bytes: nothing was stored" in seen["refused"]
    # The small store kept the latest exchanges: it still knows where Alice lives, no longer her name.
    assert seen["small"][3] == "You live in Paris." and seen["small"][4].startswith("I don't know your name")
    assert seen["small_status"]["trimmed"] == 6 and seen["small_status"]["messages"][0]["role"] == "user"
    # The same budget with summaries: nothing trimmed, the name recalled from the summary the worker process wrote.
    assert seen["summarized"][3:] == ["You live in Paris.", "Your name is Alice."]
    status = seen["summarized_status"]
    assert status["summaries"] >= 2 and status["trimmed"] == status["summary_failures"] == 0
    assert status["messages"][0]["contents"][0]["text"] == (
        "Summary of the earlier conversation: the user's name is Alice; the user lives in Paris."
    )


def test_worker_role_without_a_configured_scheduler_is_a_one_line_error(run_script_here: ScriptRunner) -> None:
    result = run_script_here(SCRIPT, "--role", "worker", env={"DTS_ENDPOINT": ""})  # blank counts as unset
    assert result.returncode == 1
    assert result.stderr.startswith("error: --role worker needs DTS_ENDPOINT") and result.stderr.count("\n") == 1


def test_help_runs_nothing_and_an_unknown_flag_is_refused(run_script_here: ScriptRunner) -> None:
    helped = run_script_here(SCRIPT, "--help")
    assert helped.returncode == 0 and "--role {all,worker,client}" in helped.stdout and "Backends:" not in helped.stdout
    assert "--timeout SECONDS" in helped.stdout and "seconds a read waits for the worker (30)" in helped.stdout
    refused = run_script_here(SCRIPT, "--colour")
    assert refused.returncode == 2 and "unrecognized arguments: --colour" in refused.stderr


# --- The whole demo as a reader runs it; the copy-paste check -------------------------------------------------------


@pytest.mark.timeout(90)
def test_the_script_runs_as_a_user_would_and_leaves_nothing_open(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT, timeout=80, env={"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error::ResourceWarning"})
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr and "Traceback" not in result.stderr
    out = result.stdout
    assert out.startswith("Backends: model=offline model")
    assert "User: My favorite drink is tea." in out  # the retried note is shown where it is written
    assert out.count("Agent: Your name is Alice.") == 2  # after the restart, and from the summary
    assert "Agent: Your favorite drink is tea." in out
    assert "The history now begins with: Summary of the earlier conversation: the user's name is Alice;" in out
    assert "Refused: session 'alice-" in out
    assert "Ended the demo's history orchestrations" in out


def test_the_role_arguments_of_the_durable_samples_refuse_a_timeout_that_is_not_a_positive_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = add_role_arguments(argparse.ArgumentParser(prog=SCRIPT))
    assert vars(parser.parse_args([])) == {"role": "all", "timeout": 30.0}
    assert vars(parser.parse_args(["--role", "client", "--timeout", "2.5"])) == {"role": "client", "timeout": 2.5}
    for bad in ("0", "-1", "nan", "inf", "1e30", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["--timeout", bad])
        assert exit_info.value.code == 2
        assert f"argument --timeout: {bad!r} is not a positive number of seconds" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_the_store_and_its_orchestrator_work_copied_alone(tmp_path: Path) -> None:
    """The store and its orchestrator copied from the script, with durable_chat_history.py copied beside them; the
    copy's worker writes summaries with a stand-in chat client (the framework's summarizer prompt, its own reply)."""
    body, beside = EMBEDDED_SCHEDULER + STANDALONE_BODY, {"durable_chat_history.py": ENGINE}
    run_standalone(tmp_path, SCRIPT, PUBLIC_API, body, beside=beside)


STANDALONE_BODY = """
    import asyncio  # after EMBEDDED_SCHEDULER: `port`, `backend`
    from agent_framework import ChatResponse, Message
    from durabletask.client import TaskHubGrpcClient
    from durabletask.worker import TaskHubGrpcWorker
    from copied import DurableTaskChatMessageStore
    from durable_chat_history import ChatHistoryError, HistoryTooLarge

    class NewerMessage(Message):  # what a newer framework might write
        def to_dict(self, **kwargs):
            return {**super().to_dict(**kwargs), "type": "message", "schema_version": 2}

    class Summarizer:  # a stand-in chat client: it counts the lines of the transcript it was asked to summarise
        async def get_response(self, messages, **kwargs):
            assert messages[0].text.startswith("**Generate a clear and complete summary")
            lines = messages[1].text.count(chr(10)) + 1
            return ChatResponse(messages=[Message("assistant", [f"Summary of {lines} messages."])])

    worker = TaskHubGrpcWorker(host_address=f"localhost:{port}")
    client = TaskHubGrpcClient(host_address=f"localhost:{port}")

    async def round_trip():
        store = DurableTaskChatMessageStore(client, writes_per_generation=2, history_budget_bytes=1_500)
        for n in range(5):
            await store.save_messages("session-1", [Message("user", [f"m{n}"]), Message("assistant", [f"r{n}"])])
        assert [m.text for m in await store.get_messages("session-1")][-2:] == ["m4", "r4"]
        restarted = DurableTaskChatMessageStore(client)  # a new store on the same scheduler
        messages = await restarted.get_messages("session-1")
        status = await restarted.read_status("session-1")
        assert status["writes"] == 5 and status["trimmed"] > 0 and messages[0].role == "user"
        try:
            await store.save_messages("session-1", [Message("user", ["x" * 3_000])])
            raise AssertionError("an oversize write was accepted")
        except HistoryTooLarge as error:
            assert isinstance(error, ChatHistoryError) and "1,500 bytes" in str(error)
        await store.save_messages("session-2", [NewerMessage("user", ["x"], message_id="newer")])
        try:
            await store.get_messages("session-2")
            raise AssertionError("a record this version cannot read was stored")
        except ChatHistoryError as error:
            assert "message 'newer' is not one this version reads" in str(error)
        summarizing = DurableTaskChatMessageStore(client, history_budget_bytes=1_500, summarize=True)
        for n in range(8):
            await summarizing.save_messages("session-3", [Message("user", [f"m{n}"]), Message("assistant", ["ok"])])
        status = await summarizing.read_status("session-3")
        assert status["summaries"] > 0 and status["trimmed"] == 0 and status["writes"] == 8
        assert status["messages"][0]["contents"][0]["text"].startswith("Summary of ")
        print("copied store: ok")

    async def main():
        DurableTaskChatMessageStore.register(worker, summarizer=Summarizer())  # on this loop: summaries run here
        worker.start()
        try:
            await round_trip()
        finally:
            await asyncio.to_thread(worker.stop)

    try:
        asyncio.run(main())
    finally:
        client.close()
        backend.stop(grace=0.5)
"""
