"""The chat store contract (tests/chat_store_contract.py) run on every store here and on the framework's own.

The framework's providers are comparisons: where one cannot meet a rule, the expected failure names the behaviour
measured on agent-framework-core 1.23.0 / agent-framework-redis 1.0.0b261022, so a fix upstream turns it red. Our
stores' factories are the small classes below the comparisons (constructor arguments and exception types in one
place each). `bench/chat_store_matrix.py` turns a run of this module into the README's matrix.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import fakeredis
import pytest
import redis.asyncio as redis
from agent_framework import FileHistoryProvider, HistoryProvider, InMemoryHistoryProvider
from agent_framework_redis import RedisHistoryProvider

from sample_support import SchedulerBackend
from tests.chat_store_contract import ChatStoreContract, StoreFactory

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
    expected_failures: ClassVar[dict[str, str]] = {
        "test_two_source_ids_on_one_storage_are_isolated": (
            "the file is named after the session id alone: two providers with different source_ids on one "
            "directory read and write the same file"
        ),
        "test_hostile_session_ids_stay_in_their_own_scope": (
            "a 10 KB session id raises OSError [Errno 36] File name too long, not a ValueError"
        ),
        "test_empty_session_id_is_refused": (
            "an empty or None session id is accepted and stored in default.jsonl, shared by every such session"
        ),
        "test_newer_schema_record_is_a_clear_error_naming_the_session": FILE_NEWER_SCHEMA,
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
    "a corrupt record raises json.JSONDecodeError ('Expecting value ...'), naming neither the session nor the key"
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
    expected_failures: ClassVar[dict[str, str]] = {
        "test_invalid_window_is_refused_at_construction": REDIS_WINDOW,
        "test_window_never_starts_with_an_orphan_tool_result": REDIS_ORPHAN,
        "test_corrupt_record_is_a_clear_error_naming_the_session": REDIS_CORRUPT,
        "test_newer_schema_record_is_a_clear_error_naming_the_session": REDIS_NEWER_SCHEMA,
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
    scope_arguments = ("tenant_id",)

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
        self.errors = (ValueError, importlib.import_module("durable_task_chat_message_store").ChatHistoryError)
        self.byte_budget = self.store_class.__init__.__kwdefaults__["history_budget_bytes"]
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
        event = importlib.import_module("durable_task_chat_message_store").ChatHistory.APPEND_EVENT
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
    """One worker for both Durable Task stores' orchestrations (and the activity), started once for this module."""
    worker = scheduler.worker()
    for module, store in (
        ("durable_task_chat_message_store", "DurableTaskChatMessageStore"),
        ("durable_task_activity_chat_message_store", "DurableTaskActivityChatMessageStore"),
    ):
        try:
            getattr(importlib.import_module(module), store).register(worker)
        except ImportError:
            continue  # that store's own tests fail with the import error; the other store still runs
    worker.start()
    yield
    worker.stop()


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
