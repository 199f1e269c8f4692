"""custom_chat_message_store_thread.py: threads kept apart in SQLite, recall after a restart, the window, the session
file (atomic, compare-and-swap), two processes on one thread, bad stored data, signals and bad input."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import io
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from agent_framework import AgentSession, Content, InMemoryHistoryProvider, Message

import custom_chat_message_store_thread as sample
from custom_chat_message_store_thread import (
    DATABASE_NAME,
    ChatStoreError,
    CorruptHistoryError,
    CustomChatMessageStore,
    Run,
    SessionConflictError,
    SessionFileError,
    main,
)
from sample_support.offline_model import OFFLINE_MODEL_NAME, OfflineModelServer
from tests.conftest import REPO_DIR, ScriptRunner
from tests.local_servers import start_child, stop_child
from tests.standalone import run_standalone

SCRIPT = "custom_chat_message_store_thread.py"
SOURCE = CustomChatMessageStore.DEFAULT_SOURCE_ID


# region Reading what the sample stored


@dataclass
class Thread:
    session_id: str
    rows: list[tuple[str, dict]]  # (role, stored record) in stored order

    @property
    def roles(self) -> list[str]:
        return [role for role, _ in self.rows]

    @property
    def texts(self) -> list[str]:
        return [_text(record) for _, record in self.rows]

    def reply_to(self, question: str, occurrence: int = -1) -> str:
        """The assistant text (after any tool calls) that answered `question` (its last occurrence by default)."""
        index = [i for i, text in enumerate(self.texts) if text == question][occurrence]
        return next(_text(record) for role, record in self.rows[index + 1 :] if role == "assistant" and _text(record))


def _text(record: dict) -> str:
    return " ".join(content.get("text", "") for content in record["contents"])


def read_threads(database: Path) -> dict[str, Thread]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT session_id, role, message_json FROM chat_messages ORDER BY id").fetchall()
    threads: dict[str, Thread] = {}
    for session_id, role, message_json in rows:
        threads.setdefault(session_id, Thread(session_id, [])).rows.append((role, json.loads(message_json)))
    return threads


def row_count(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT COUNT(*) FROM chat_messages").fetchone()[0]


def insert_raw(database: Path, session_id: str, message_json: Any, source_id: str = SOURCE) -> int:
    """A row written behind the store's back (a bug, a newer store version, a disk fault); returns its id."""
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        cursor = db.execute(
            "INSERT INTO chat_messages VALUES (NULL, ?, ?, 'user', ?)", (source_id, session_id, message_json)
        )
        return cursor.lastrowid or 0


def save(store: CustomChatMessageStore, session: AgentSession, messages: list[Message]) -> None:
    asyncio.run(store.save_messages(session.session_id, messages, state=session.state.setdefault(store.source_id, {})))


def load(store: CustomChatMessageStore, session: AgentSession) -> list[Message]:
    return asyncio.run(store.get_messages(session.session_id, state=session.state.setdefault(store.source_id, {})))


def texts(messages: list[Message]) -> list[str]:
    return [message.text for message in messages]


# endregion

# region The demo, run once in-process


@dataclass
class DemoRun:
    data_dir: Path
    output: str
    run: Run
    threads: dict[str, Thread]
    new_rejections: list[str]

    def session_file(self, name: str) -> dict:
        return json.loads((self.data_dir / f"{name}.session.json").read_text(encoding="utf-8"))

    def thread(self, name: str) -> Thread:
        """A thread of the demo, found by its first message."""
        first = {"alice": "My name is Alice.", "bob": "My name is Bob.", "carol": "My name is Carol."}
        (thread,) = (t for t in self.threads.values() if t.texts[0] == first.get(name, "What is my name?"))
        return thread


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, offline_model: OfflineModelServer) -> DemoRun:
    """The sample's `main()` run once in-process with its files kept in a temporary directory."""
    data_dir = tmp_path_factory.mktemp("custom-store")
    rejections_before = len(offline_model.rejections)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        run = asyncio.run(main(data_dir=data_dir))
    return DemoRun(
        data_dir,
        output.getvalue(),
        run,
        read_threads(data_dir / DATABASE_NAME),
        offline_model.rejections[rejections_before:],
    )


@pytest.fixture
def kept_copy(demo_run: DemoRun, tmp_path: Path) -> Path:
    """A copy of the demo's data directory, as a reader keeps it with --keep."""
    data_dir = tmp_path / "kept"
    shutil.copytree(demo_run.data_dir, data_dir)
    return data_dir


def test_two_users_are_kept_apart_and_counted_exactly(demo_run: DemoRun) -> None:
    assert demo_run.new_rejections == []
    alice, bob = demo_run.thread("alice"), demo_run.thread("bob")
    assert alice.session_id != bob.session_id
    assert len(bob.rows) == demo_run.run.stored["bob"] == 4
    # Bob asked where he lives: Alice's thread (Paris) is not in his history.
    assert "Paris" not in demo_run.run.replies["bob", "Where do I live?"]
    assert "Paris" not in bob.reply_to("Where do I live?")
    assert not any("Alice" in text or "Paris" in text for text in bob.texts)


def test_session_file_holds_only_the_id_and_store_settings(demo_run: DemoRun) -> None:
    saved = demo_run.session_file("alice")
    assert saved["session_id"] == demo_run.thread("alice").session_id
    # Version 2: saved in part 2, then again after the restart's two turns.
    settings = {"store": "sqlite-chat-message-store", "schema_version": 1, "version": 2, "max_messages": None}
    assert saved["state"] == {"custom_chat_message_store": settings}
    assert demo_run.session_file("bob")["state"]["custom_chat_message_store"]["version"] == 1
    assert "Alice" not in (demo_run.data_dir / "alice.session.json").read_text(encoding="utf-8")
    assert not [path.name for path in demo_run.data_dir.iterdir() if path.name.endswith(".tmp")]


def test_restart_recalls_and_a_new_thread_does_not(demo_run: DemoRun) -> None:
    alice = demo_run.thread("alice")
    assert len(alice.rows) == demo_run.run.stored["alice"] == 8  # two turns before the restart, two after
    assert [text for role, text in zip(alice.roles, alice.texts, strict=True) if role == "user"] == [
        "My name is Alice.",
        "I live in Paris.",
        "What is my name?",
        "Where do I live?",
    ]
    assert "Alice" in demo_run.run.replies["alice", "What is my name?"] == alice.reply_to("What is my name?")
    assert "Paris" in demo_run.run.replies["alice", "Where do I live?"] == alice.reply_to("Where do I live?")
    # Negative control: the new thread on the same database knows nothing.
    assert len(demo_run.thread("new").rows) == demo_run.run.stored["new"] == 2
    assert not any(name in demo_run.run.replies["new", "What is my name?"] for name in ("Alice", "Bob", "Carol"))


def test_window_drops_the_orphan_tool_result_and_forgets_older_facts(demo_run: DemoRun) -> None:
    carol = demo_run.thread("carol")
    # The store keeps everything; only what is sent to the model is windowed.
    assert carol.roles == ["user", "assistant", "user", "assistant", "tool", *(["assistant", "user"] * 2), "assistant"]
    assert demo_run.run.stored["carol"] == 10
    tool_result = carol.rows[4][1]["contents"][0]
    assert tool_result["type"] == "function_result"
    assert "sunny and 18 degrees" in tool_result["result"]  # the sample's get_weather really ran
    assert "sunny" in demo_run.run.replies["carol", "What's the weather in Seattle?"]
    # Before the last turn the newest 4 of 8 began with that tool result: it was dropped, 3 were sent.
    assert demo_run.run.window == ["assistant", "user", "assistant"]
    assert "Carol" not in demo_run.run.replies["carol", "What is my name?"]
    assert demo_run.new_rejections == []


def test_a_second_run_on_a_kept_data_dir_refuses_to_overwrite_its_threads(kept_copy: Path) -> None:
    rows_before = row_count(kept_copy / DATABASE_NAME)
    alice_file = (kept_copy / "alice.session.json").read_bytes()
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SessionConflictError) as refused:
        asyncio.run(main(data_dir=kept_copy))
    assert "alice.session.json holds version 2 of thread" in str(refused.value)
    # Refused before any turn: nothing appended, the session file untouched.
    assert row_count(kept_copy / DATABASE_NAME) == rows_before
    assert (kept_copy / "alice.session.json").read_bytes() == alice_file


# endregion

# region The store on its own: window, append, isolation, round trip, concurrency


def conversation_with_tool_call() -> list[Message]:
    call = Content.from_function_call(call_id="call-1", name="get_weather", arguments='{"location": "Oslo"}')
    return [
        Message("user", ["My name is Dana."]),
        Message("assistant", ["Hi Dana."]),
        Message("user", ["Weather in Oslo?"]),
        Message("assistant", [call]),
        Message("tool", [Content.from_function_result(call_id="call-1", result="rain")]),
        Message("assistant", ["It rains in Oslo."]),
        Message("user", ["Thanks."]),
        Message("assistant", ["You're welcome."]),
    ]


def orphan_results(messages: list[Message]) -> list[str]:
    calls = {c.call_id for m in messages for c in m.contents if c.type == "function_call"}
    return [
        c.call_id or "" for m in messages for c in m.contents if c.type == "function_result" and c.call_id not in calls
    ]


@pytest.mark.parametrize(
    ("max_messages", "expected_texts"),
    [
        (
            None,
            [
                "My name is Dana.",
                "Hi Dana.",
                "Weather in Oslo?",
                "",
                "",
                "It rains in Oslo.",
                "Thanks.",
                "You're welcome.",
            ],
        ),
        (5, ["", "", "It rains in Oslo.", "Thanks.", "You're welcome."]),
        (4, ["It rains in Oslo.", "Thanks.", "You're welcome."]),  # would start on the tool result
        (2, ["Thanks.", "You're welcome."]),
        (1, ["You're welcome."]),
    ],
)
def test_window_is_the_newest_messages_in_order_never_starting_on_a_tool_result(
    tmp_path: Path, max_messages: int | None, expected_texts: list[str]
) -> None:
    store, session = CustomChatMessageStore(tmp_path / DATABASE_NAME, max_messages=max_messages), AgentSession()
    messages = conversation_with_tool_call()
    save(store, session, messages[:2])
    save(store, session, messages[2:])
    window = load(store, session)
    assert texts(window) == expected_texts
    assert orphan_results(window) == []
    assert store.message_count(session.session_id) == 8


def test_a_window_cut_between_parallel_tool_results_starts_after_them(tmp_path: Path) -> None:
    calls = [Content.from_function_call(call_id=f"c{i}", name="get_weather", arguments="{}") for i in (1, 2)]
    results = [Message("tool", [Content.from_function_result(call_id=f"c{i}", result="sun")]) for i in (1, 2)]
    store, session = CustomChatMessageStore(tmp_path / DATABASE_NAME, max_messages=3), AgentSession()
    save(store, session, [Message("user", ["Weather?"]), Message("assistant", calls), *results])
    save(store, session, [Message("assistant", ["Sunny in both."])])
    # The newest 3 are result c1, result c2, the answer: both results lost their call.
    assert texts(load(store, session)) == ["Sunny in both."]


def test_save_appends_without_reading_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, session = CustomChatMessageStore(tmp_path / DATABASE_NAME), AgentSession()
    save(store, session, [Message("user", ["one"])])

    def no_reads(*args: object) -> list[Message]:
        raise AssertionError("save_messages read the history")

    monkeypatch.setattr(store, "_window", no_reads)
    save(store, session, [Message("user", ["one"]), Message("assistant", ["two"])])
    monkeypatch.undo()
    # Append-only: the repeated "one" is a new message, as the agent only ever hands over new ones.
    assert texts(load(store, session)) == ["one", "one", "two"]


def test_the_window_is_read_by_the_database_not_after_loading_everything(tmp_path: Path) -> None:
    database = tmp_path / DATABASE_NAME
    store, session = CustomChatMessageStore(database, max_messages=2), AgentSession()
    save(store, session, [Message("user", ["old"])])
    insert_raw(database, session.session_id, "an old row that is not JSON")
    save(store, session, [Message("user", ["new"]), Message("assistant", ["newest"])])
    # Only the newest 2 rows are read (and parsed): the bad row further back is never touched.
    assert texts(load(store, session)) == ["new", "newest"]
    with pytest.raises(CorruptHistoryError):  # the whole thread, read by a thread state without a window
        load(CustomChatMessageStore(database), AgentSession(session_id=session.session_id))


HOSTILE_IDS = [
    "../../etc/passwd",
    "x' OR '1'='1",
    'a"; DROP TABLE chat_messages; --',
    "tenant|app|agent",
    "*?[abc]",
    "%",
    "_",
    "s" * 10_000,
    "s" * 9_999,
]


def test_hostile_session_ids_stay_in_their_own_thread(tmp_path: Path) -> None:
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    for index, session_id in enumerate(HOSTILE_IDS):
        save(store, AgentSession(session_id=session_id), [Message("user", [f"message {index}"])])
    for index, session_id in enumerate(HOSTILE_IDS):
        assert texts(load(CustomChatMessageStore(tmp_path / DATABASE_NAME), AgentSession(session_id=session_id))) == [
            f"message {index}"
        ]
        path = tmp_path / "files" / f"{index}.session.json"
        path.parent.mkdir(exist_ok=True)
        store.save_session(AgentSession(session_id=session_id), path)
        assert store.load_session(path).session_id == session_id
    assert load(store, AgentSession(session_id="s")) == []
    for empty in ("", None):
        with pytest.raises(ValueError, match="non-empty string"):
            asyncio.run(store.save_messages(empty, [Message("user", ["lost?"])]))
        with pytest.raises(ValueError, match="non-empty string"):
            asyncio.run(store.get_messages(empty))
    assert row_count(tmp_path / DATABASE_NAME) == len(HOSTILE_IDS)
    assert {path.name for path in tmp_path.iterdir()} <= {
        "files",
        DATABASE_NAME,
        f"{DATABASE_NAME}-wal",
        f"{DATABASE_NAME}-shm",
    }


def test_two_source_ids_on_one_database_are_kept_apart(tmp_path: Path) -> None:
    history = CustomChatMessageStore(tmp_path / DATABASE_NAME, source_id="history")
    audit = CustomChatMessageStore(tmp_path / DATABASE_NAME, source_id="audit")
    session = AgentSession()
    save(history, session, [Message("user", ["for the model"])])
    save(audit, session, [Message("user", ["for the auditors"])])
    assert texts(load(history, session)) == ["for the model"]
    assert texts(load(audit, session)) == ["for the auditors"]


def every_content_type() -> list[Message]:
    call = Content.from_function_call(call_id="call_z", name="get_weather", arguments='{"location": "Zürich"}')
    return [
        Message(
            "user",
            ["Wetter in Zürich? 天気 🌦️ \u202eRTL\u202c \x00 'single' \"double\""],
            author_name="Zoë",
            message_id="u1",
        ),
        Message("assistant", [call], author_name="assistant", message_id="a1"),
        Message("tool", [Content.from_function_result(call_id="call_z", result="sunny, 18 °C")], message_id="t1"),
        Message(
            "assistant",
            [
                Content.from_text("Sunny, but:"),
                Content.from_error(message="quota exceeded", error_code="429", error_details="retry later"),
                Content.from_usage({"input_token_count": 12, "output_token_count": 3, "total_token_count": 15}),
            ],
            message_id="a2",
        ),
        Message(
            "user",
            [
                Content.from_data(b"\x89PNG\r\n\x1a\n\x00", "image/png"),
                Content.from_uri("https://example.com/c.png", media_type="image/png"),
            ],
            message_id="u2",
            additional_properties={"trace": "kept"},
        ),
        Message("user", ["x" * (1024 * 1024)], message_id="big"),
    ]


def test_every_content_type_round_trips_with_ids_authors_unicode_and_a_1_mb_message(tmp_path: Path) -> None:
    session, written = AgentSession(), every_content_type()
    save(CustomChatMessageStore(tmp_path / DATABASE_NAME), session, written)
    read = load(CustomChatMessageStore(tmp_path / DATABASE_NAME), session)
    assert [message.to_dict() for message in read] == [message.to_dict() for message in written]


def test_two_writers_on_one_thread_lose_nothing_and_each_save_stays_together(tmp_path: Path) -> None:
    writers, session_id = [CustomChatMessageStore(tmp_path / DATABASE_NAME) for _ in range(2)], "shared"
    saves = {(w, k): [Message("user", [f"w{w} s{k} m{i}"]) for i in range(3)] for w in range(2) for k in range(20)}

    async def write(w: int) -> None:
        for k in range(20):
            await writers[w].save_messages(session_id, saves[w, k], state={})

    async def both() -> None:
        await asyncio.gather(write(0), write(1))

    asyncio.run(both())
    read = texts(load(writers[0], AgentSession(session_id=session_id)))
    assert sorted(read) == sorted(m.text for batch in saves.values() for m in batch)
    for batch in saves.values():
        start = read.index(batch[0].text)
        assert read[start : start + 3] == [m.text for m in batch]


@pytest.mark.parametrize("value", [0, -1, -5, True, False, 1.0, 2.5, 1e30, float("inf"), "3", 2**63])
def test_an_invalid_window_is_refused_at_construction(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"^max_messages must be None or a whole number from 1 to 2\*\*63 - 1, not "):
        CustomChatMessageStore(tmp_path / DATABASE_NAME, max_messages=value)  # type: ignore[arg-type]
    assert not (tmp_path / DATABASE_NAME).exists()


def test_a_file_that_is_not_a_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    database = tmp_path / DATABASE_NAME
    database.write_text("not a database, just a text file someone put here " * 100, encoding="utf-8")
    with pytest.raises(ChatStoreError, match=rf"^chat database {database}: file is not a database$"):
        CustomChatMessageStore(database)
    assert database.read_text(encoding="utf-8").startswith("not a database")


# endregion

# region Bad stored rows


def good_record(text: str) -> str:
    return json.dumps({"schema_version": 1, **Message("user", [text]).to_dict()})


BAD_ROWS: dict[str, tuple[Any, str]] = {
    "truncated JSON": ('{"schema_version": 1, "type": "message", "role": "user", "contents": [', "Expecting value"),
    "newer schema": (
        json.dumps({**json.loads(good_record("from the future")), "schema_version": 2}),
        "schema version 2, this store reads 1",
    ),
    "no schema version": (json.dumps(Message("user", ["hand-written"]).to_dict()), "schema version None"),
    "role is a number": ('{"schema_version": 1, "role": 5, "contents": []}', "not a message"),
    "content is a number": ('{"schema_version": 1, "role": "user", "contents": [5]}', "'int' object has no attribute"),
    "a JSON list": ("[1, 2]", ""),
    "an integer": (42, "has no attribute"),  # the TEXT column stores it as '42'; JSON reads a number
    "bytes": (b"\x80 not UTF-8", "can't decode"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_names_the_thread_and_the_good_rows_stay_readable(tmp_path: Path, case: str) -> None:
    database = tmp_path / DATABASE_NAME
    store, session, neighbour = CustomChatMessageStore(database), AgentSession(session_id="t-1"), AgentSession()
    save(store, session, [Message("user", ["before"])])
    save(store, neighbour, [Message("user", ["next door"])])
    bad_row = insert_raw(database, session.session_id, BAD_ROWS[case][0])
    save(store, session, [Message("assistant", ["after"])])

    with pytest.raises(CorruptHistoryError) as refused:
        load(CustomChatMessageStore(database), session)
    message = str(refused.value)
    assert message.startswith(f"thread 't-1' in {database}: unreadable row {bad_row}: ")
    assert BAD_ROWS[case][1] in message
    assert "\n" not in message
    assert texts(list(refused.value.readable)) == ["before", "after"]
    assert texts(load(store, neighbour)) == ["next door"]
    # A window that does not reach the bad row reads as usual.
    assert texts(load(CustomChatMessageStore(database, max_messages=1), AgentSession(session_id="t-1"))) == ["after"]


# endregion

# region Session files: atomic, compare-and-swap, refusals


def saved_thread(tmp_path: Path, **store_options: Any) -> tuple[CustomChatMessageStore, AgentSession, Path]:
    store, session = CustomChatMessageStore(tmp_path / DATABASE_NAME, **store_options), AgentSession()
    save(store, session, conversation_with_tool_call())
    path = tmp_path / "thread.session.json"
    store.save_session(session, path)
    return store, session, path


def test_two_app_instances_continuing_one_thread_keep_both_turns_and_the_later_save_is_told(tmp_path: Path) -> None:
    store, session, path = saved_thread(tmp_path)
    first, second = CustomChatMessageStore(tmp_path / DATABASE_NAME), CustomChatMessageStore(tmp_path / DATABASE_NAME)
    thread_a, thread_b = first.load_session(path), second.load_session(path)
    save(first, thread_a, [Message("user", ["from A"]), Message("assistant", ["to A"])])
    save(second, thread_b, [Message("user", ["from B"]), Message("assistant", ["to B"])])
    first.save_session(thread_a, path)

    with pytest.raises(SessionConflictError) as told:
        second.save_session(thread_b, path)
    assert str(told.value).startswith(f"session file {path} holds version 2 of thread '{session.session_id}', saved by")
    assert "this run's messages are in the database" in str(told.value)
    # Nothing lost: both turns are in the thread, in arrival order (the documented merge), and B can reload and go on.
    latest = store.load_session(path)
    assert latest.state[SOURCE]["version"] == 2
    assert texts(load(store, latest))[-4:] == ["from A", "to A", "from B", "to B"]
    second.save_session(second.load_session(path), path)
    assert store.load_session(path).state[SOURCE]["version"] == 3


def test_a_session_file_of_another_thread_is_not_overwritten(tmp_path: Path) -> None:
    store, _, path = saved_thread(tmp_path)
    before = path.read_bytes()
    with pytest.raises(SessionConflictError, match="holds version 1 of thread"):
        store.save_session(AgentSession(), path, check_only=True)
    assert path.read_bytes() == before


def test_a_failed_write_keeps_the_old_file_and_the_session_can_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, session, path = saved_thread(tmp_path)
    before = path.read_bytes()

    def disk_full(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sample.os, "replace", disk_full)
    with pytest.raises(SessionFileError, match=rf"^cannot write session file {path}: No space left on device$"):
        store.save_session(session, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    store.save_session(session, path)  # the failed save did not move the session's version on
    assert store.load_session(path).state[SOURCE]["version"] == 2


def test_check_only_writes_nothing(tmp_path: Path) -> None:
    store, session = CustomChatMessageStore(tmp_path / DATABASE_NAME), AgentSession()
    store.save_session(session, tmp_path / "new.session.json", check_only=True)
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(DATABASE_NAME)) == []
    assert session.state[SOURCE]["version"] == 0


def test_a_restored_thread_keeps_the_window_it_was_started_with(tmp_path: Path) -> None:
    _, _, path = saved_thread(tmp_path, max_messages=2)
    unbounded = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    restored = unbounded.load_session(path)
    assert texts(load(unbounded, restored)) == ["Thanks.", "You're welcome."]
    fresh: dict[str, Any] = {}
    asyncio.run(unbounded.get_messages(restored.session_id, state=fresh))
    assert fresh["max_messages"] is None


def in_memory_session_json() -> str:
    """What a session kept by the framework's default in-memory history looks like when saved."""
    session, provider = AgentSession(), InMemoryHistoryProvider()
    state = session.state.setdefault(provider.source_id, {})
    asyncio.run(provider.save_messages(session.session_id, [Message("user", ["My name is Eve."])], state=state))
    return json.dumps(session.to_dict())


def settings_json(**settings: Any) -> str:
    full = {"store": "sqlite-chat-message-store", "schema_version": 1, "version": 1, "max_messages": None, **settings}
    return json.dumps({"type": "session", "session_id": "s", "state": {SOURCE: full}})


BAD_SESSION_FILES: dict[str, tuple[str | bytes, str]] = {
    "corrupt": ('{"type": "session", "session_id": ', "is not valid JSON"),
    "not a session": ("[1, 2, 3]", "is not a saved agent session"),
    "empty id": ('{"type": "session", "session_id": "", "state": {}}', "has no session id"),
    "numeric id": ('{"type": "session", "session_id": 7, "state": {}}', "has no session id"),
    "other store": (in_memory_session_json(), "was not written by CustomChatMessageStore (it holds: in_memory)"),
    "newer schema": (settings_json(schema_version=2), "uses store schema 2, not 1"),
    "bad version": (settings_json(version="2"), "has an invalid version: '2'"),
    "window 0": (settings_json(max_messages=0), "max_messages must be None or a whole number"),
    "window -3": (settings_json(max_messages=-3), "not -3"),
    "window true": (settings_json(max_messages=True), "not True"),
    "window 1.5": (settings_json(max_messages=1.5), "not 1.5"),
    "window 1e30": (settings_json(max_messages=1e30), "not 1e+30"),
    "window text": (settings_json(max_messages="all"), "not 'all'"),
    "not UTF-8": (b'{"type": "session", "session_id": "caf\xe9"}', "can't decode"),
}


@pytest.mark.parametrize("case", BAD_SESSION_FILES)
def test_a_bad_session_file_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD_SESSION_FILES[case]
    path = tmp_path / "bad.session.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    with pytest.raises(SessionFileError, match=rf"^session file {path} ") as refused:
        store.load_session(path)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)
    # A bad file at the destination is not overwritten either.
    with pytest.raises(SessionFileError):
        store.save_session(AgentSession(), path)
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode("utf-8"))


def test_resume_on_a_read_only_file_system_fails_before_any_turn(
    kept_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_file, rows_before = kept_copy / "alice.session.json", row_count(kept_copy / DATABASE_NAME)

    def read_only_file_system(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sample, "open", read_only_file_system, raising=False)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SessionFileError) as refused:
        asyncio.run(main(resume=session_file))
    assert str(refused.value) == f"cannot write session file {session_file}: Read-only file system"
    assert row_count(kept_copy / DATABASE_NAME) == rows_before


# endregion

# region The script as a reader runs it


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removeprefix("error: ").rstrip("\n")


@pytest.mark.timeout(90)
def test_script_runs_as_a_user_would_cleans_up_and_leaks_nothing(run_script: ScriptRunner) -> None:
    # Under -X dev with ResourceWarning as an error: an unclosed client or connection would show up on stderr.
    result = run_script(SCRIPT, env={"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error::ResourceWarning"})
    assert result.returncode == 0, result.stderr
    # Dev mode's asyncio debug may report a slow step ("Executing <Task ...> took 0.15 seconds"); nothing else.
    assert [line for line in result.stderr.splitlines() if not line.startswith("Executing <")] == []
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Backends: model=offline model at http://127.0.0.1:")
    assert "Messages stored for this thread: 8" in lines
    assert "Your name is Alice." in lines[lines.index("Messages stored for this thread: 8") - 3]
    assert "Messages stored per thread: {'alice': 8, 'bob': 4, 'new': 2, 'carol': 10}" in lines
    database = Path(next(line for line in lines if line.startswith("Database: ")).removeprefix("Database: "))
    assert not database.parent.exists()
    assert lines[-1] == f"Removed {database.parent} (run with --keep to keep it)"


def test_resume_continues_the_thread_from_its_files(
    demo_run: DemoRun, kept_copy: Path, run_script_here: ScriptRunner
) -> None:
    # The script's own __main__ on the files alone (the two-process test below resumes in new processes).
    result = run_script_here(SCRIPT, "--resume", str(kept_copy / "alice.session.json"))
    assert result.returncode == 0, result.stderr
    assert "8 messages in the database" in result.stdout
    alice = read_threads(kept_copy / DATABASE_NAME)[demo_run.thread("alice").session_id]
    assert len(alice.rows) == 12
    assert "Alice" in alice.reply_to("What is my name?")
    assert "Paris" in alice.reply_to("Where do I live?")
    assert json.loads((kept_copy / "alice.session.json").read_text(encoding="utf-8"))["state"][SOURCE]["version"] == 3


@pytest.mark.parametrize("case", ["corrupt", "other store", "window 1e30"])
def test_resume_with_a_bad_session_file_is_one_line_and_loses_nothing(
    kept_copy: Path, run_script_here: ScriptRunner, case: str
) -> None:
    bad_file = kept_copy / "alice.session.json"
    bad_file.write_text(str(BAD_SESSION_FILES[case][0]), encoding="utf-8")
    database_before = (kept_copy / DATABASE_NAME).read_bytes()

    line = one_error_line(run_script_here(SCRIPT, "--resume", str(bad_file)))

    assert line.startswith(f"session file {bad_file} ")
    assert BAD_SESSION_FILES[case][1] in line
    assert bad_file.read_text(encoding="utf-8") == BAD_SESSION_FILES[case][0]
    assert (kept_copy / DATABASE_NAME).read_bytes() == database_before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["/dev/zero", "a FIFO", "a 64 MB file", "a directory"])
def test_resume_refuses_what_is_not_a_session_file_without_waiting(
    kept_copy: Path, tmp_path: Path, run_script_here: ScriptRunner, kind: str
) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "a FIFO": tmp_path / "fifo", "a 64 MB file": tmp_path / "huge.json"}.get(
        kind, tmp_path / "dir.session.json"
    )
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a 64 MB file":
        with open(path, "wb") as file:
            file.truncate(64 * 1024 * 1024)
    elif kind == "a directory":
        path.mkdir()
    rows_before = row_count(kept_copy / DATABASE_NAME)

    line = one_error_line(run_script_here(SCRIPT, "--data-dir", str(kept_copy), "--resume", str(path)))

    expected = (
        "cannot read session file {}: Is a directory"
        if kind == "a directory"
        else ("session file {} is not a regular file of at most 1048576 bytes")
    )
    assert line == expected.format(path)
    assert row_count(kept_copy / DATABASE_NAME) == rows_before


def test_a_session_file_path_that_is_a_directory_fails_before_any_turn(
    tmp_path: Path, run_script_here: ScriptRunner
) -> None:
    data_dir = tmp_path / "dd"
    (data_dir / "alice.session.json").mkdir(parents=True)

    line = one_error_line(run_script_here(SCRIPT, "--data-dir", str(data_dir)))

    assert line == f"cannot read session file {data_dir / 'alice.session.json'}: Is a directory"
    assert row_count(data_dir / DATABASE_NAME) == 0


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Files cannot be created in `directory`: chmod for a normal user, the immutable attribute for root."""
    as_root = os.geteuid() == 0
    if as_root and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    elif not as_root:
        directory.chmod(0o555)
    try:
        try:
            (directory / ".probe").touch()
        except OSError:
            yield
            return
        (directory / ".probe").unlink()
        pytest.skip("no way to make a read-only directory here (root without chattr); the EROFS test covers the path")
    finally:
        if as_root and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True, check=False)
        directory.chmod(0o755)


def test_resume_of_a_session_file_in_a_read_only_directory_is_one_line_and_appends_nothing(
    kept_copy: Path, tmp_path: Path, run_script_here: ScriptRunner
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    session_file = locked / "alice.session.json"
    shutil.copy(kept_copy / "alice.session.json", session_file)
    database_before = (kept_copy / DATABASE_NAME).read_bytes()
    with read_only(locked):
        line = one_error_line(run_script_here(SCRIPT, "--data-dir", str(kept_copy), "--resume", str(session_file)))
    assert line.startswith(f"cannot write session file {session_file}: ")
    assert (kept_copy / DATABASE_NAME).read_bytes() == database_before


def test_a_corrupt_row_through_the_script_blames_the_thread_not_the_model(
    demo_run: DemoRun, kept_copy: Path, run_script_here: ScriptRunner
) -> None:
    alice = demo_run.thread("alice").session_id
    bad_row = insert_raw(kept_copy / DATABASE_NAME, alice, '{"schema_version": 1, "role": 5}')

    line = one_error_line(run_script_here(SCRIPT, "--resume", str(kept_copy / "alice.session.json")))

    assert line == f"thread '{alice}' in {kept_copy / DATABASE_NAME}: unreadable row {bad_row}: not a message"


@contextlib.contextmanager
def model_holding_the_first_requests(offline_base_url: str, count: int) -> Iterator[str]:
    """A model endpoint in front of the offline model that holds the first `count` requests until all have arrived:
    every process that sends one has read its session file by then."""
    origin, arrivals, together = urlsplit(offline_base_url), itertools.count(), threading.Barrier(count, timeout=60)

    class Forward(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if next(arrivals) < count:
                together.wait()
            request = urllib.request.Request(
                f"{origin.scheme}://{origin.netloc}{self.path}", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, payload = error.code, error.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(90)
def test_two_processes_continuing_one_thread_lose_nothing_and_the_later_save_is_told(
    demo_run: DemoRun, kept_copy: Path, offline_model: OfflineModelServer
) -> None:
    session_file, alice = kept_copy / "alice.session.json", demo_run.thread("alice").session_id
    with model_holding_the_first_requests(offline_model.base_url, 2) as base_url:
        env = {
            **os.environ,
            "OPENAI_API_KEY": "offline",
            "OPENAI_MODEL": OFFLINE_MODEL_NAME,
            "OPENAI_BASE_URL": base_url,
        }
        processes = [
            start_child(
                [sys.executable, SCRIPT, "--resume", str(session_file)],
                cwd=REPO_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            outcomes = [(*process.communicate(timeout=60), process.returncode) for process in processes]
        finally:
            for process in processes:
                stop_child(process)

    assert sorted(code for _, _, code in outcomes) == [0, 1], outcomes
    (_, told, _) = next(outcome for outcome in outcomes if outcome[2] == 1)
    assert told.startswith(f"error: session file {session_file} holds version 3 of thread '{alice}', saved by another")
    assert told.count("\n") == 1
    assert json.loads(session_file.read_text(encoding="utf-8"))["state"][SOURCE]["version"] == 3
    # Both runs' turns are in the thread (8 before, 4 from each), each turn's question right before its answer.
    thread = read_threads(kept_copy / DATABASE_NAME)[alice]
    assert len(thread.rows) == 16
    assert thread.roles[8:] == ["user", "assistant"] * 4
    assert sorted(thread.texts[8::2]) == ["What is my name?"] * 2 + ["Where do I live?"] * 2
    assert all("Alice" in text for text in thread.texts[9::2] if "name" in text)


@pytest.mark.timeout(60)
def test_sigterm_mid_turn_removes_the_temporary_directory() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent_model:  # accepts and never answers
        silent_model.settimeout(30)
        port = silent_model.getsockname()[1]
        env = {
            **os.environ,
            "OPENAI_API_KEY": "unused",
            "OPENAI_MODEL": "unused",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "PYTHONUNBUFFERED": "1",
        }
        process = start_child(
            [sys.executable, SCRIPT], cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            head = [process.stdout.readline() for _ in range(2)]
            folder = Path(head[1].removeprefix("Database: ").strip()).parent
            assert folder.is_dir(), head
            connection, _ = silent_model.accept()  # the first turn is waiting for the model
            with connection:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            rest, stderr = process.stdout.read(), process.stderr.read()
        finally:
            stop_child(process)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert not folder.exists()
    assert f"Removed {folder}" in rest


@pytest.mark.parametrize(("flag", "code"), [("--help", 0), ("--no-such-flag", 2)])
def test_help_runs_nothing_and_unknown_flags_are_refused(run_script_here: ScriptRunner, flag: str, code: int) -> None:
    result = run_script_here(SCRIPT, flag)
    assert result.returncode == code
    assert "Backends:" not in result.stdout
    if code == 0:
        assert result.stdout.startswith("usage: ") and "--resume SESSION_FILE" in result.stdout
    else:
        assert "unrecognized arguments: --no-such-flag" in result.stderr


# endregion


def test_the_store_works_copied_alone_into_an_empty_module(tmp_path: Path) -> None:
    """Issue 8: the classes a reader copies, with nothing of this repository beside them."""
    names = [
        "ChatStoreError",
        "SessionFileError",
        "SessionConflictError",
        "CorruptHistoryError",
        "CustomChatMessageStore",
    ]
    body = """
        import asyncio, contextlib, sqlite3
        from pathlib import Path
        from agent_framework import AgentSession, Content, Message
        from copied import CorruptHistoryError, CustomChatMessageStore, SessionConflictError

        database, session = Path("chat.sqlite3"), AgentSession()
        store = CustomChatMessageStore(database, max_messages=3)
        call = Content.from_function_call(call_id="c1", name="get_weather", arguments="{}")
        written = [
            Message("user", ["Weather?"]),
            Message("assistant", [call]),
            Message("tool", [Content.from_function_result(call_id="c1", result="sun")]),
            Message("assistant", ["Sunny."]),
        ]
        state = session.state.setdefault(store.source_id, {})
        asyncio.run(store.save_messages(session.session_id, written, state=state))
        window = asyncio.run(store.get_messages(session.session_id, state=state))
        assert [m.to_dict() for m in window] == [m.to_dict() for m in written[1:]], window

        store.save_session(session, Path("thread.json"))
        other = CustomChatMessageStore(database)  # a restart: a new store object, the thread from its file
        restored, stale = other.load_session(Path("thread.json")), other.load_session(Path("thread.json"))
        assert restored.session_id == session.session_id
        assert len(asyncio.run(other.get_messages(restored.session_id, state=restored.state[other.source_id]))) == 3
        other.save_session(restored, Path("thread.json"))
        try:
            other.save_session(stale, Path("thread.json"))
            raise AssertionError("a stale session overwrote the file")
        except SessionConflictError:
            pass

        with contextlib.closing(sqlite3.connect(database)) as db, db:
            row = (store.source_id, session.session_id, "user", "oops")
            db.execute("INSERT INTO chat_messages VALUES (NULL, ?, ?, ?, ?)", row)
        try:
            asyncio.run(CustomChatMessageStore(database).get_messages(session.session_id))
            raise AssertionError("a corrupt row was read")
        except CorruptHistoryError as error:
            assert session.session_id in str(error) and len(error.readable) == 4
        print("copied store: ok")
    """
    assert run_standalone(tmp_path, SCRIPT, names, body).stdout == "copied store: ok\n"
