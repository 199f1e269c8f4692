"""custom_chat_message_store_thread.py: threads kept apart in SQLite, recall after a restart, the window, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_framework import AgentSession, Content, InMemoryHistoryProvider, Message

from custom_chat_message_store_thread import (
    DATABASE_NAME,
    CustomChatMessageStore,
    SessionFileError,
    main,
)
from sample_support import SampleError
from sample_support.offline_model import OfflineModelServer
from tests.conftest import ScriptRunner

SCRIPT = "custom_chat_message_store_thread.py"


@dataclass
class Thread:
    session_id: str
    rows: list[tuple[str, dict]]  # (role, message dict) in stored order

    @property
    def roles(self) -> list[str]:
        return [role for role, _ in self.rows]

    def reply_to(self, question: str) -> str:
        """The assistant text (after any tool calls) that answered the last `question` in this thread."""
        texts = [_text(message) for _, message in self.rows]
        index = len(texts) - 1 - texts[::-1].index(question)
        return next(
            _text(message) for role, message in self.rows[index + 1 :] if role == "assistant" and _text(message)
        )


def _text(message: dict) -> str:
    return " ".join(content.get("text", "") for content in message["contents"])


def read_threads(database: Path) -> dict[str, Thread]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT session_id, role, message_json FROM chat_messages ORDER BY id").fetchall()
    threads: dict[str, Thread] = {}
    for session_id, role, message_json in rows:
        threads.setdefault(session_id, Thread(session_id, [])).rows.append((role, json.loads(message_json)))
    return threads


@dataclass
class DemoRun:
    data_dir: Path
    output: str
    threads: dict[str, Thread]
    new_rejections: list[str]

    def session_file(self, name: str) -> dict:
        return json.loads((self.data_dir / f"{name}.session.json").read_text(encoding="utf-8"))

    def thread(self, name: str) -> Thread:
        return self.threads[self.session_file(name)["session_id"]]

    def thread_starting_with(self, first_message: str) -> Thread:
        (thread,) = (t for t in self.threads.values() if _text(t.rows[0][1]) == first_message)
        return thread


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, offline_model: OfflineModelServer) -> DemoRun:
    """The sample's `main()` run once in-process with its files kept in a temporary directory."""
    data_dir = tmp_path_factory.mktemp("custom-store")
    rejections_before = len(offline_model.rejections)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        asyncio.run(main(data_dir=data_dir))
    return DemoRun(
        data_dir,
        output.getvalue(),
        read_threads(data_dir / DATABASE_NAME),
        offline_model.rejections[rejections_before:],
    )


def test_two_users_are_kept_apart_and_counted_exactly(demo_run: DemoRun) -> None:
    assert demo_run.new_rejections == []
    alice, bob = demo_run.thread("alice"), demo_run.thread("bob")
    assert alice.session_id != bob.session_id
    assert len(bob.rows) == 4
    assert "Stored messages: alice=4 bob=4" in demo_run.output
    # Bob asked where he lives: Alice's thread (Paris) is not in his history.
    assert "Paris" not in bob.reply_to("Where do I live?")
    assert not any("Alice" in _text(message) or "Paris" in _text(message) for _, message in bob.rows)


def test_session_json_holds_only_id_and_store_settings(demo_run: DemoRun) -> None:
    saved = demo_run.session_file("alice")
    assert saved["session_id"] == demo_run.thread("alice").session_id
    assert saved["state"] == {
        "custom_chat_message_store": {"store": "sqlite-chat-message-store", "schema_version": 1, "max_messages": None}
    }
    assert "Alice" not in (demo_run.data_dir / "alice.session.json").read_text(encoding="utf-8")


def test_restart_recalls_and_a_new_thread_does_not(demo_run: DemoRun) -> None:
    alice = demo_run.thread("alice")
    assert len(alice.rows) == 8  # two turns before the restart, two after, in one thread
    assert [_text(message) for role, message in alice.rows if role == "user"] == [
        "My name is Alice.",
        "I live in Paris.",
        "What is my name?",
        "Where do I live?",
    ]
    assert "Alice" in alice.reply_to("What is my name?")
    assert "Paris" in alice.reply_to("Where do I live?")
    # Negative control: the fresh thread of section 4, on the same database, knows nothing.
    fresh = demo_run.thread_starting_with("What is my name?")
    assert len(fresh.rows) == 2
    assert not any(name in fresh.reply_to("What is my name?") for name in ("Alice", "Bob", "Carol"))


def test_window_drops_the_orphan_tool_result_and_forgets_older_facts(demo_run: DemoRun) -> None:
    carol = demo_run.thread_starting_with("My name is Carol.")
    # The store keeps everything; only what is sent to the model is windowed.
    assert carol.roles == [
        "user",
        "assistant",
        "user",
        "assistant",  # the get_weather call
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    tool_result = carol.rows[4][1]["contents"][0]
    assert tool_result["type"] == "function_result"
    assert "sunny and 18 degrees" in tool_result["result"]  # the sample's get_weather really ran
    assert "sunny" in carol.reply_to("What's the weather in Seattle?")
    # Before the last turn the last 4 of 8 began with that tool result: it was dropped, 3 were sent.
    assert "Stored: 8 messages; the model gets 3: assistant, user, assistant" in demo_run.output
    assert "Tool results dropped from the window's start (their call is outside it): 1" in demo_run.output
    assert "Carol" not in carol.reply_to("What is my name?")
    assert demo_run.new_rejections == []


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
    ],
)
def test_window_is_the_newest_messages_in_order_never_starting_on_a_tool_result(
    tmp_path: Path, max_messages: int | None, expected_texts: list[str]
) -> None:
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME, max_messages=max_messages)
    messages = conversation_with_tool_call()
    asyncio.run(store.save_messages("s", messages[:2]))
    asyncio.run(store.save_messages("s", messages[2:]))
    window = asyncio.run(store.get_messages("s", state={}))
    assert [message.text for message in window] == expected_texts
    assert window[0].role != "tool"
    calls = {c.call_id for m in window for c in m.contents if c.type == "function_call"}
    assert all(c.call_id in calls for m in window for c in m.contents if c.type == "function_result")
    assert store.message_count("s") == 8


def test_save_appends_without_reading_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    asyncio.run(store.save_messages("s", [Message("user", ["one"])]))

    def no_reads(*args: object) -> list[str]:
        raise AssertionError("save_messages read the history")

    monkeypatch.setattr(store, "_read", no_reads)
    asyncio.run(store.save_messages("s", [Message("user", ["one"]), Message("assistant", ["two"])]))
    monkeypatch.undo()
    # Append-only: the repeated "one" is a new message, as the agent only ever hands over new ones.
    assert [m.text for m in asyncio.run(store.get_messages("s"))] == ["one", "one", "two"]


HOSTILE_IDS = [
    "../../etc/passwd",
    "x' OR '1'='1",
    'a"; DROP TABLE chat_messages; --',
    "tenant|app|agent",
    "%",
    "_",
    "s" * 10_000,
    "s" * 9_999,
]


def test_hostile_session_ids_stay_in_their_own_thread(tmp_path: Path) -> None:
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    for index, session_id in enumerate(HOSTILE_IDS):
        asyncio.run(store.save_messages(session_id, [Message("user", [f"message {index}"])]))
    for index, session_id in enumerate(HOSTILE_IDS):
        assert [m.text for m in asyncio.run(store.get_messages(session_id))] == [f"message {index}"]
        session = AgentSession(session_id=session_id)
        assert store.deserialize_session(store.serialize_session(session)).session_id == session_id
    assert asyncio.run(store.get_messages("s")) == []
    for empty in ("", None):
        with pytest.raises(ValueError, match="needs a session id"):
            asyncio.run(store.save_messages(empty, [Message("user", ["lost?"])]))
    assert sum(store.message_count(session_id) for session_id in HOSTILE_IDS) == len(HOSTILE_IDS)
    assert {path.name for path in tmp_path.iterdir()} <= {DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"}


def in_memory_session_json() -> str:
    """What a session kept by the framework's default in-memory history looks like when saved."""
    session, provider = AgentSession(), InMemoryHistoryProvider()
    state = session.state.setdefault(provider.source_id, {})
    asyncio.run(provider.save_messages(session.session_id, [Message("user", ["My name is Eve."])], state=state))
    return json.dumps(session.to_dict())


BAD_SESSION_FILES = {
    "corrupt": ('{"type": "session", "session_id": ', "is not valid JSON"),
    "not a session": ("[1, 2, 3]", "is not a saved agent session"),
    "empty id": ('{"type": "session", "session_id": "", "state": {}}', "has no session id"),
    "other store": (in_memory_session_json(), "was not written by CustomChatMessageStore (state it holds: in_memory)"),
    "redis store": (
        '{"type": "session", "session_id": "r1", "state": {}}',
        "was not written by CustomChatMessageStore",
    ),
    "newer schema": (
        '{"type": "session", "session_id": "s", "state": {"custom_chat_message_store": '
        '{"store": "sqlite-chat-message-store", "schema_version": 2, "max_messages": null}}}',
        "uses store schema 2, not 1",
    ),
    "bad window": (
        '{"type": "session", "session_id": "s", "state": {"custom_chat_message_store": '
        '{"store": "sqlite-chat-message-store", "schema_version": 1, "max_messages": "all"}}}',
        "invalid max_messages setting: 'all'",
    ),
}


@pytest.mark.parametrize("case", BAD_SESSION_FILES)
def test_bad_session_json_is_refused_with_a_clear_message(tmp_path: Path, case: str) -> None:
    text, message = BAD_SESSION_FILES[case]
    store = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    with pytest.raises(SessionFileError, match=r"^session JSON ") as refused:
        store.deserialize_session(text)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would_and_cleans_up(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Backends: model=offline model at http://127.0.0.1:")
    assert "Stored messages: alice=4 bob=4" in lines
    recall = lines.index("Messages stored for this session: 8")
    assert "Alice" in lines[recall - 3] and lines[recall - 4] == "User: What is my name?"
    assert lines[-5:-2] == ["alice: 8", "bob: 4", "carol: 10"]
    database = Path(next(line for line in lines if line.startswith("Database: ")).removeprefix("Database: "))
    assert not database.parent.exists()
    assert lines[-1] == f"Removed {database.parent} (run with --keep to keep it)"


@pytest.mark.timeout(60)
def test_resume_continues_the_thread_in_another_process(
    demo_run: DemoRun, tmp_path: Path, run_script: ScriptRunner
) -> None:
    data_dir = tmp_path / "kept"
    shutil.copytree(demo_run.data_dir, data_dir)
    result = run_script(SCRIPT, "--resume", str(data_dir / "alice.session.json"))
    assert result.returncode == 0, result.stderr
    assert "8 messages in the database" in result.stdout
    alice = read_threads(data_dir / DATABASE_NAME)[demo_run.thread("alice").session_id]
    assert len(alice.rows) == 12
    assert "Alice" in alice.reply_to("What is my name?")
    assert "Paris" in alice.reply_to("Where do I live?")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["corrupt", "other store"])
def test_resume_with_a_bad_session_file_is_one_line_and_loses_nothing(
    demo_run: DemoRun, tmp_path: Path, run_script: ScriptRunner, case: str
) -> None:
    data_dir = tmp_path / "kept"
    shutil.copytree(demo_run.data_dir, data_dir)
    bad_file = data_dir / "alice.session.json"
    bad_file.write_text(BAD_SESSION_FILES[case][0], encoding="utf-8")
    database_before = (data_dir / DATABASE_NAME).read_bytes()

    result = run_script(SCRIPT, "--resume", str(bad_file))

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: session file {bad_file} ")
    assert BAD_SESSION_FILES[case][1] in result.stderr
    assert bad_file.read_text(encoding="utf-8") == BAD_SESSION_FILES[case][0]
    assert (data_dir / DATABASE_NAME).read_bytes() == database_before


def test_a_file_that_is_not_a_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    database = tmp_path / DATABASE_NAME
    database.write_text("not a database, just a text file someone put here " * 100, encoding="utf-8")
    with pytest.raises(SampleError, match=rf"^chat database {database}: file is not a database$"):
        CustomChatMessageStore(database)
    assert database.read_text(encoding="utf-8").startswith("not a database")


def test_a_restored_thread_keeps_the_window_it_was_started_with(tmp_path: Path) -> None:
    windowed = CustomChatMessageStore(tmp_path / DATABASE_NAME, max_messages=2)
    session = AgentSession()
    state = session.state.setdefault(windowed.source_id, {})
    asyncio.run(windowed.save_messages(session.session_id, conversation_with_tool_call(), state=state))
    saved = windowed.serialize_session(session)

    unbounded = CustomChatMessageStore(tmp_path / DATABASE_NAME)
    restored = unbounded.deserialize_session(saved)
    window = asyncio.run(unbounded.get_messages(restored.session_id, state=restored.state[unbounded.source_id]))
    assert [message.text for message in window] == ["Thanks.", "You're welcome."]
    fresh_state: dict = {}
    asyncio.run(unbounded.get_messages(restored.session_id, state=fresh_state))
    assert fresh_state["max_messages"] is None
