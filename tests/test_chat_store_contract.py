"""The chat store contract (tests/chat_store_contract.py) run on every store here and on the framework's own.

The framework's providers are comparisons: where one cannot meet a rule, the expected failure names the behaviour
measured on agent-framework-core 1.23.0 / agent-framework-redis 1.0.0b261022, so a fix upstream turns it red. Our
stores' factories are the small classes below the comparisons (constructor arguments and exception types in one
place each). `bench/chat_store_matrix.py` turns a run of this module into the README's matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import sqlite3
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import fakeredis
import pytest
import redis.asyncio as redis
from agent_framework import AgentSession, FileHistoryProvider, HistoryProvider, InMemoryHistoryProvider, Message
from agent_framework_redis import RedisHistoryProvider

from sample_support import SchedulerBackend, select_model
from tests.chat_store_contract import (
    ChatStoreContract,
    StoreFactory,
    hostile_session_ids,
    starts_with_orphan_tool_result,
)
from tests.conftest import REPO_DIR

# region The framework's providers (comparisons)


class InMemoryFactory(StoreFactory):
    name = "InMemoryHistoryProvider"
    keyed_by_session_id = False

    def open(self, **options: Any) -> HistoryProvider:
        return InMemoryHistoryProvider(**options)


FILE_NEWER_SCHEMA = (
    "a record with a field this version does not know raises TypeError (Message.__init__() got an unexpected "
    "keyword argument 'schema_version'), naming neither the session nor the file"
)


class FileFactory(StoreFactory):
    name = "FileHistoryProvider"
    writes_raw_records = True
    expected_failures: ClassVar[dict[str, tuple[str, type[BaseException]]]] = {
        "test_two_source_ids_on_one_storage_are_isolated": (
            "the file is named after the session id alone: two providers with different source_ids on one "
            "directory read and write the same file",
            AssertionError,
        ),
        "test_hostile_session_ids_stay_in_their_own_scope": (
            "a 10 KB session id raises OSError [Errno 36] File name too long, not a ValueError",
            OSError,
        ),
        "test_empty_session_id_is_refused": (
            "an empty or None session id is accepted and stored in default.jsonl, shared by every such session",
            pytest.fail.Exception,
        ),
        "test_newer_schema_record_is_a_clear_error_naming_the_session": (FILE_NEWER_SCHEMA, TypeError),
    }

    def open(self, **options: Any) -> HistoryProvider:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FileHistoryProvider is marked experimental
            return FileHistoryProvider(self.tmp_path / "history", **options)

    async def write_raw_record(self, store: HistoryProvider, session_id: str, record: str) -> bool:
        assert isinstance(store, FileHistoryProvider)
        path = store._session_file_path(session_id)  # test-only: where the provider keeps this session
        with path.open("a", encoding="utf-8") as file:
            file.write(record + "\n")
        return True


REDIS_WINDOW = (
    "max_messages=0 is accepted and silently stores nothing (documented: retention disabled); 1e30 and True are "
    "accepted (True keeps one message); only negative values raise ValueError"
)
REDIS_ORPHAN = (
    "max_messages trims the stored list by count: with max_messages=2 the history read back is "
    "[tool result, answer], the result's call trimmed away"
)
REDIS_CORRUPT = (
    "a corrupt record raises json.JSONDecodeError ('Expecting value: line 1 column 50'), naming neither the session "
    "nor the key"
)
REDIS_NEWER_SCHEMA = (
    "a record with a field this version does not know raises TypeError (Message.__init__() got an unexpected "
    "keyword argument 'schema_version'), naming neither the session nor the key"
)


class RedisFactory(StoreFactory):
    """Redis on fakeredis (one fake server per test) or on the real `redis-server` of the `redis_server_url` fixture;
    every test uses its own application id, so tests on the shared server never meet."""

    server: ClassVar[str] = "fakeredis"
    has_clear = True
    window_argument = "max_messages"
    writes_raw_records = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request)
        self.url = request.getfixturevalue("redis_server_url") if self.server == "redis-server" else None
        self.fake_server = fakeredis.FakeServer()
        self.clients: list[redis.Redis] = []

    def client(self) -> redis.Redis:
        if self.url:
            client = redis.from_url(self.url, decode_responses=True)
        else:
            client = fakeredis.FakeAsyncRedis(server=self.fake_server, decode_responses=True)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    def key(self, store: HistoryProvider, session_id: str) -> str:
        assert isinstance(store, RedisHistoryProvider)
        return store._redis_key(session_id)  # test-only: the upstream provider has no public name for its key

    async def write_raw_record(self, store: HistoryProvider, session_id: str, record: str) -> bool:
        await self.client().rpush(self.key(store, session_id), record)
        return True


class RedisProviderFactory(RedisFactory):
    name = "RedisHistoryProvider-fakeredis"
    scope_arguments = ("tenant_id", "application_id", "agent_id")
    expected_failures: ClassVar[dict[str, tuple[str, type[BaseException]]]] = {
        "test_invalid_window_is_refused_at_construction": (REDIS_WINDOW, AssertionError),
        "test_window_never_starts_with_an_orphan_tool_result": (REDIS_ORPHAN, AssertionError),
        "test_corrupt_record_is_a_clear_error_naming_the_session": (REDIS_CORRUPT, AssertionError),
        "test_newer_schema_record_is_a_clear_error_naming_the_session": (REDIS_NEWER_SCHEMA, TypeError),
    }

    def open(self, **options: Any) -> HistoryProvider:
        options.setdefault("application_id", f"contract-{self.uid}")
        return RedisHistoryProvider(redis_client=self.client(), **options)


class RedisProviderOnServerFactory(RedisProviderFactory):
    name = "RedisHistoryProvider-redis-server"
    server = "redis-server"


# endregion

# region This collection's stores: their modules, constructors and exception types, in one place each
# (imported when a test needs them, so a store that does not import fails its own tests, not the whole matrix)


class SqliteFactory(StoreFactory):
    name = "CustomChatMessageStore"
    window_argument = "max_messages"
    writes_raw_records = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request)
        self.sample = importlib.import_module("custom_chat_message_store_thread")
        self.errors = (ValueError, self.sample.ChatStoreError)
        self.database = self.tmp_path / "chat.sqlite3"

    def open(self, **options: Any) -> HistoryProvider:
        return self.sample.CustomChatMessageStore(self.database, **options)

    async def write_raw_record(self, store: HistoryProvider, session_id: str, record: str) -> bool:
        db = sqlite3.connect(self.database)
        with db:
            db.execute(
                "INSERT INTO chat_messages (source_id, session_id, role, message_json) VALUES (?, ?, ?, ?)",
                (store.source_id, session_id, "user", record),
            )
        db.close()
        return True


class RedisStoreFactory(RedisFactory):
    name = "RedisChatMessageStore-fakeredis"
    scope_arguments = ("tenant_id", "application_id", "agent_id")

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request)
        self.sample = importlib.import_module("redis_chat_message_store_thread")
        self.errors = (ValueError, self.sample.RedisStoreError)

    def open(self, **options: Any) -> HistoryProvider:
        options.setdefault("application_id", f"contract-{self.uid}")
        return self.sample.RedisChatMessageStore(redis_client=self.client(), **options)

    def key(self, store: HistoryProvider, session_id: str) -> str:
        return store.redis_key(session_id)  # type: ignore[attr-defined]


class RedisStoreOnServerFactory(RedisStoreFactory):
    name = "RedisChatMessageStore-redis-server"
    server = "redis-server"


class DurableFactory(StoreFactory):
    """A Durable Task store on the session's embedded scheduler, with one worker for this module (see below)."""

    name = "DurableTaskChatMessageStore"
    module: ClassVar[str] = "durable_task_chat_message_store"
    store_class_name: ClassVar[str] = "DurableTaskChatMessageStore"
    budget_argument = "history_budget_bytes"
    budgets_for_the_orphan_rule = (700, 1_100)
    writes_raw_records = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(request)
        self.sample = importlib.import_module(self.module)
        self.store_class = getattr(self.sample, self.store_class_name)
        self.errors = (ValueError, importlib.import_module("durable_chat_history").ChatHistoryError)
        # The default of the first constructor that names it (the activity store's passes its options through).
        defaults = (getattr(cls.__init__, "__kwdefaults__", None) or {} for cls in self.store_class.__mro__)
        self.byte_budget = next(found["history_budget_bytes"] for found in defaults if "history_budget_bytes" in found)
        request.getfixturevalue("durable_worker")
        self.scheduler: SchedulerBackend = request.getfixturevalue("scheduler")
        self.clients: list[Any] = []

    def open(self, **options: Any) -> HistoryProvider:
        client = self.scheduler.client()
        self.clients.append(client)
        return self.store_class(client, read_timeout=10, **options)

    async def aclose(self) -> None:
        for client in self.clients:
            client.close()

    async def write_raw_record(self, store: HistoryProvider, session_id: str, record: str) -> bool:
        """An append event raised by something other than this store's `save_messages` (an older or newer client).
        Returns False if the orchestration refused it (it records refused writes with their reason)."""
        try:
            message: Any = json.loads(record)
        except json.JSONDecodeError:
            message = record
        write_id = f"raw-{uuid.uuid4().hex}"
        instance_id = store.instance_id(session_id)  # type: ignore[attr-defined]
        event = importlib.import_module("durable_chat_history").ChatHistory.APPEND_EVENT
        client = store.client  # type: ignore[attr-defined]
        client.raise_orchestration_event(instance_id, event, data={"write_id": write_id, "messages": [message]})
        for _ in range(500):  # until the orchestration has taken the event in, or stopped
            state = client.get_orchestration_state(instance_id)
            status = state.get_custom_status() if state else None
            if state is None or state.runtime_status.name not in ("RUNNING", "PENDING"):
                return True  # whatever the store does with it now, it must say so when read
            if status and write_id in status.get("write_ids", []):
                refused = [entry for entry in status.get("rejected", []) if entry["write_id"] == write_id]
                assert not refused or refused[0]["reason"], "a refused write without a reason"
                return not refused
            await asyncio.sleep(0.02)
        raise AssertionError(f"the orchestration {instance_id} did not take the raw write in")


class ActivityFactory(DurableFactory):
    name = "DurableTaskActivityChatMessageStore"
    module = "durable_task_activity_chat_message_store"
    store_class_name = "DurableTaskActivityChatMessageStore"
    budgets_for_the_orphan_rule = (1_800, 2_600)


@pytest.fixture(scope="module")
def durable_worker(scheduler: SchedulerBackend) -> Iterator[None]:
    """One worker, started once for this module, for everything durable here: both Durable Task stores'
    orchestrations (and the activity) and the orchestrated thread (its orchestrations, entity and agent-turn activity).
    A module that does not import fails its own tests with the import error; the others still run."""
    worker = scheduler.worker()
    for module, store in (
        ("durable_task_chat_message_store", "DurableTaskChatMessageStore"),
        ("durable_task_activity_chat_message_store", "DurableTaskActivityChatMessageStore"),
    ):
        with contextlib.suppress(ImportError):
            getattr(importlib.import_module(module), store).register(worker)
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(ImportError):
            roles = importlib.import_module("durable_task_orchestrated_thread_roles")
            roles.new_worker(worker, stack.enter_context(roles.AgentTurns(select_model().client_kwargs())))
        worker.start()
        yield
        worker.stop()  # before the agent turns' chat client closes: it lets a running turn finish


# endregion


class TestChatStoreContract(ChatStoreContract):
    factories: ClassVar[list[type[StoreFactory]]] = [
        InMemoryFactory,
        FileFactory,
        RedisProviderFactory,
        RedisProviderOnServerFactory,
        SqliteFactory,
        RedisStoreFactory,
        RedisStoreOnServerFactory,
        DurableFactory,
        ActivityFactory,
    ]


# region The orchestrated thread: its history is the session that travels in its orchestration's state

# The rules that do not apply to it, and why (the matrix shows them as n/a with these reasons).
ORCHESTRATED_NOT_APPLICABLE = {
    "test_round_trip_keeps_every_content_type": "no save API: the thread holds what its own agent produced",
    "test_round_trip_keeps_unicode_and_a_1_mb_message": "no save API: a message over its turn limit is refused",
    "test_scopes_keep_users_apart": "no user or application scope: one orchestration per thread id",
    "test_two_source_ids_on_one_storage_are_isolated": "one history per thread, no source_id",
    "test_clear_removes_exactly_its_own_scope": "no clear(): a thread ends when its orchestration is terminated",
    "test_windows_of_one_and_two_messages": "a byte budget, no message window",
    "test_newer_schema_record_is_a_clear_error_naming_the_session": "no stored records: its state is its own input",
}


class OrchestratedAdapter:
    """The orchestrated thread's public API as the tests below use it, in one place."""

    def __init__(self, client: Any, uid: str) -> None:
        self.sample = importlib.import_module("durable_task_orchestrated_thread")
        self.client, self.uid = client, uid
        self.errors = (ValueError, self.sample.ThreadError)

    def thread(self, name: str, **start: Any) -> Any:
        """A started thread; its id is `name` after this test's unique prefix ("" stays "")."""
        thread = self.sample.OrchestratedThread(self.client, f"{self.uid}-{name}" if name else "")
        thread.start(**start)
        return thread

    async def ask(self, thread: Any, words: str, *, approve: bool = True) -> str:
        """One user turn; a tool call that waits for a person is answered with `approve`. Returns the reply."""
        turn_id = thread.raise_turn(words)
        reply = await thread.wait(turn_id)
        if reply.approvals:
            for request in reply.approvals:
                thread.answer(request["id"], approve)
            reply = await thread.wait(turn_id)
        return reply.text

    def session_messages(self, thread: Any) -> list[Message]:
        """The session the orchestration's current generation started with (written at each continue-as-new)."""
        state = json.loads(self.client.get_orchestration_state(thread.thread_id).serialized_input)
        return AgentSession.from_dict(state["session"]).state[self.sample.HISTORY]["messages"]


@pytest.fixture(params=["OrchestratedThread"])
def orchestrated(scheduler: SchedulerBackend) -> Iterator[OrchestratedAdapter]:
    client = scheduler.client()
    yield OrchestratedAdapter(client, uuid.uuid4().hex[:10])
    client.close()


@pytest.mark.usefixtures("durable_worker")
class TestOrchestratedThreadHistory:
    """The contract's rules that apply to the orchestrated thread, through its own API (turns, not saves). With
    `every=1` each event ends a generation, so the orchestration's input holds the session after every turn."""

    def test_agent_turns_store_exactly_their_messages(self, orchestrated: OrchestratedAdapter) -> None:
        async def body() -> None:
            thread = orchestrated.thread("turns", every=1)
            said = ["My name is Alice.", "Book a flight to Paris.", "What is my name?"]
            replies = [await orchestrated.ask(thread, words) for words in said]
            stored = orchestrated.session_messages(thread)
            assert [m.text for m in stored if m.role == "user" and m.text] == said
            assert [m.text for m in stored if m.role == "assistant" and m.text] == replies
            calls = [c.call_id for m in stored for c in m.contents if c.type == "function_call"]
            assert calls == [c.call_id for m in stored for c in m.contents if c.type == "function_result"]
            assert len(calls) == 1
            assert len({m.message_id for m in stored}) == len(stored), "a message was stored twice"
            assert replies[2] == "Your name is Alice."

        asyncio.run(body())

    def test_restored_session_continues_a_tool_conversation(self, orchestrated: OrchestratedAdapter) -> None:
        """Every turn restores the session from the orchestration's state (to_dict -> JSON -> from_dict) in the
        activity, and each generation starts from it; approved bookings keep their call ids across both."""

        async def body() -> None:
            thread = orchestrated.thread("restore", every=1)
            await orchestrated.ask(thread, "My name is Alice.")
            assert "Booked a flight to Paris" in await orchestrated.ask(thread, "Book a flight to Paris.")
            assert "Booked a flight to Rome" in await orchestrated.ask(thread, "Book a flight to Rome.")
            assert await orchestrated.ask(thread, "What is my name?") == "Your name is Alice."
            stored = orchestrated.session_messages(thread)
            calls = [c.call_id for m in stored for c in m.contents if c.type == "function_call"]
            results = [c.call_id for m in stored for c in m.contents if c.type == "function_result"]
            assert len(calls) == 2
            assert calls == results
            # The strict offline endpoint accepted every request (the autouse `no_model_rejections` fixture checks it).

        asyncio.run(body())

    def test_two_sessions_are_isolated(self, orchestrated: OrchestratedAdapter) -> None:
        async def body() -> None:
            alice, other = orchestrated.thread("alice"), orchestrated.thread("other")
            await orchestrated.ask(alice, "My name is Alice.")
            assert "Alice" not in await orchestrated.ask(other, "What is my name?")
            assert await orchestrated.ask(alice, "What is my name?") == "Your name is Alice."

        asyncio.run(body())

    def test_hostile_session_ids_stay_in_their_own_scope(self, orchestrated: OrchestratedAdapter) -> None:
        async def body() -> None:
            victim = orchestrated.thread("victim")
            await orchestrated.ask(victim, "My name is Victor.")
            number = 0
            for number, thread_id in enumerate(hostile_session_ids(orchestrated.uid, victim.thread_id)):
                try:
                    thread = orchestrated.sample.OrchestratedThread(orchestrated.client, thread_id)
                    thread.start()
                except orchestrated.errors:
                    continue  # a clear refusal is fine: the id reached nothing
                await orchestrated.ask(thread, f"My favorite number is {number}.")
            assert await orchestrated.ask(victim, "What is my favorite number?") != f"Your favorite number is {number}."
            assert await orchestrated.ask(victim, "What is my name?") == "Your name is Victor."

        asyncio.run(body())

    def test_empty_session_id_is_refused(self, orchestrated: OrchestratedAdapter) -> None:
        with pytest.raises(orchestrated.errors):
            orchestrated.thread("")

    def test_invalid_window_is_refused_at_construction(self, orchestrated: OrchestratedAdapter) -> None:
        for value in (0, -1, 1e30, True):
            with pytest.raises(ValueError):
                orchestrated.thread(f"budget-{value}".replace("+", ""), session_budget=value)
                raise AssertionError(f"session_budget={value!r} was accepted")

    def test_window_never_starts_with_an_orphan_tool_result(self, orchestrated: OrchestratedAdapter) -> None:
        async def body() -> None:
            thread = orchestrated.thread("orphan", every=1, session_budget=4_500, summarize=False)
            for words in ("My name is Alice.", "Book a flight to Paris.", "Tell me a joke.", "Book a flight to Rome."):
                await orchestrated.ask(thread, words)
                kept = orchestrated.session_messages(thread)
                assert not starts_with_orphan_tool_result(kept), (
                    f"after {words!r} the session starts with {[[c.type for c in m.contents] for m in kept[:2]]}"
                )

        asyncio.run(body())

    def test_concurrent_writers_lose_nothing(
        self, orchestrated: OrchestratedAdapter, scheduler: SchedulerBackend
    ) -> None:
        async def body() -> None:
            thread = orchestrated.thread("concurrent", every=3)
            second = orchestrated.sample.OrchestratedThread(scheduler.client(), thread.thread_id)
            try:
                turn_ids = await asyncio.gather(
                    asyncio.to_thread(thread.raise_turn, "My name is Alice."),
                    asyncio.to_thread(second.raise_turn, "I live in Paris."),
                )
                for turn_id in turn_ids:
                    await thread.wait(turn_id)
                await orchestrated.ask(thread, "What is my name?")
            finally:
                second.client.close()
            for _ in range(500):  # the third turn ends the generation: the next one starts with the session
                if (thread.status() or {}).get("generation") == 1:
                    break
                await asyncio.sleep(0.01)
            stored = orchestrated.session_messages(thread)
            assert [m.role for m in stored] == ["user", "assistant"] * 3
            assert sorted(m.message_id for m in stored[:4:2]) == sorted(turn_ids)

        asyncio.run(body())

    def test_corrupt_record_is_a_clear_error_naming_the_session(self, orchestrated: OrchestratedAdapter) -> None:
        """A thread id whose orchestration is not a thread (here the Durable Task store's history) is refused."""
        durable = importlib.import_module("durable_task_chat_message_store")
        store = durable.DurableTaskChatMessageStore(orchestrated.client)
        session_id = f"{orchestrated.uid}-not-a-thread"
        asyncio.run(store.save_messages(session_id, [Message("user", ["hello"], message_id="m")]))
        instance_id = store.instance_id(session_id)
        with pytest.raises(orchestrated.errors) as error:
            orchestrated.sample.OrchestratedThread(orchestrated.client, instance_id).start()
            raise AssertionError("a thread was started on another sample's orchestration")
        assert instance_id in str(error.value)


def _not_applicable(reason: str) -> Any:
    @pytest.mark.skip(reason=f"not applicable: {reason}")
    def test(self: TestOrchestratedThreadHistory, orchestrated: OrchestratedAdapter) -> None:
        raise AssertionError("never runs")

    return test


# So that the matrix shows every rule for the orchestrated thread, and why one does not apply.
for _rule, _reason in ORCHESTRATED_NOT_APPLICABLE.items():
    setattr(TestOrchestratedThreadHistory, _rule, _not_applicable(_reason))

# endregion


def test_the_matrix_shows_each_outcome_with_its_reason(tmp_path: Any) -> None:
    """bench/chat_store_matrix.py: a pass, a failure, an expected failure, n/a and a strict XPASS, from JUnit XML."""
    spec = importlib.util.spec_from_file_location("chat_store_matrix", REPO_DIR / "bench" / "chat_store_matrix.py")
    assert spec and spec.loader
    matrix = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = matrix  # dataclasses look their module up while the class is built
    spec.loader.exec_module(matrix)
    junit = tmp_path / "contract.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" time="12.5">'
        '<testcase name="test_two_sessions_are_isolated[A]" />'
        '<testcase name="test_two_sessions_are_isolated[B]"><failure message="AssertionError: lost" /></testcase>'
        '<testcase name="test_empty_session_id_is_refused[A]"><skipped type="pytest.xfail" message="by design" />'
        "</testcase>"
        '<testcase name="test_empty_session_id_is_refused[B]">'
        '<skipped type="pytest.skip" message="not applicable: no ids">file.py:1: not applicable: no ids</skipped>'
        "</testcase>"
        '<testcase name="test_clear_removes_exactly_its_own_scope[A]">'
        '<failure message="[XPASS(strict)] was broken" /></testcase>'
        '<testcase name="test_the_matrix_shows_each_outcome_with_its_reason" />'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    cells, stores, seconds = matrix.read_junit(junit)
    assert (stores, seconds, len(cells)) == (["A", "B"], 12.5, 5)
    text = matrix.render(cells, stores, seconds)
    assert "| isolation: two sessions | ✓ | ✗ [1] |" in text
    assert "| empty session id refused | ✗ [2] | n/a [3] |" in text
    assert "| clear removes exactly its scope | ✓ [4] | n/a [5] |" in text
    assert "1. FAILED: AssertionError: lost\n2. expected failure: by design\n3. no ids\n" in text
    assert "4. passes now, although expected to fail (was broken): drop the xfail\n5. no test ran" in text
    assert "5 cells, 2 ✓, 2 ✗ (2 unexpected), 1 n/a" in text
