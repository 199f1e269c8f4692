"""A custom chat message store: conversation threads persisted in SQLite, across sessions and restarts.

`CustomChatMessageStore` is a `HistoryProvider` (the current name of a chat message store): a save appends a row per
new message; a load reads the newest `max_messages` rows, a window SQL `LIMIT` applies in the database (a
`CompactionProvider` would trim only after loading everything), and starts it after any tool result whose call it
cut off: a call-id check over those rows (the framework's `group_messages` only groups them, is private API and
stamps ids into the messages). A thread's session file (its id and settings) is written atomically and
compare-and-swapped: when two processes continue one thread, both keep their turns (in arrival order) and the later
one to save the file is told. Shown: two users in one database, a restart that recalls (a new thread does not), a
window over a tool call. Run: python custom_chat_message_store_thread.py [--keep | --data-dir DIR | --resume FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from agent_framework import Agent, AgentSession, HistoryProvider, Message, SessionStore, tool
from agent_framework.openai import OpenAIChatCompletionClient

from sample_support import SampleError, open_backends, run_sample


class ChatStoreError(RuntimeError):
    """The chat database cannot be used (not a database, locked for too long, not writable)."""


class SessionFileError(ChatStoreError, ValueError):
    """A session file this store cannot read or write (corrupt, foreign, not a regular file, not writable)."""


class SessionConflictError(ChatStoreError):
    """The session file changed since the thread was read from it: `save_session`'s compare-and-swap failed."""


class CorruptHistoryError(ChatStoreError):
    """Stored messages of a thread that cannot be read; `readable` holds the rest of its window."""

    readable: Sequence[Message] = ()


class CustomChatMessageStore(HistoryProvider):
    """Every thread in one SQLite database, one row per message. A session carries only its id and, in
    `session.state[source_id]`, its window (`max_messages`, None = all) and its session file's `version`."""

    DEFAULT_SOURCE_ID = "custom_chat_message_store"
    STORE_TYPE = "sqlite-chat-message-store"
    SCHEMA_VERSION = 1  # of a stored message and of the session settings: a newer one is refused, never misread
    MAX_SESSION_FILE_BYTES = 1 << 20

    def __init__(self, database: Path, *, max_messages: int | None = None, source_id: str = DEFAULT_SOURCE_ID) -> None:
        super().__init__(source_id)
        self.database, self.max_messages = Path(database), self._checked_window(max_messages)
        with self._connect() as db:  # WAL: readers see committed rows while another process appends
            db.executescript(
                "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS chat_messages (id INTEGER PRIMARY KEY"
                " AUTOINCREMENT, source_id TEXT NOT NULL, session_id TEXT NOT NULL, role TEXT NOT NULL, message_json"
                " TEXT NOT NULL); CREATE INDEX IF NOT EXISTS by_thread ON chat_messages (source_id, session_id, id)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection whose `with` block is one transaction (commit, or rollback on error)."""
        try:
            with closing(sqlite3.connect(self.database, timeout=10)) as connection, connection:
                yield connection
        except sqlite3.Error as error:
            raise ChatStoreError(f"chat database {self.database}: {error}") from None

    async def get_messages(self, session_id: str | None, *, state: dict | None = None, **kwargs: Any) -> list[Message]:
        SessionStore.validate_session_id(session_id or "")  # the framework's rule: a non-empty string
        return await asyncio.to_thread(self._window, session_id or "", self._settings(state))

    async def save_messages(
        self, session_id: str | None, messages: Sequence[Message], *, state: dict | None = None, **kwargs: Any
    ) -> None:
        # Only this run's new messages come in: one append, never a re-read; one transaction, so a save stays together.
        SessionStore.validate_session_id(session_id or "")
        header = {"schema_version": self.SCHEMA_VERSION}
        rows = [(self.source_id, session_id, m.role, json.dumps({**header, **m.to_dict()})) for m in messages]
        await asyncio.to_thread(self._append, rows)

    def _append(self, rows: list[tuple[str, str | None, str, str]]) -> None:
        with self._connect() as db:
            db.executemany("INSERT INTO chat_messages VALUES (NULL, ?, ?, ?, ?)", rows)

    def _window(self, session_id: str, settings: dict[str, Any]) -> list[Message]:
        query = "SELECT id, message_json FROM chat_messages WHERE source_id=? AND session_id=? ORDER BY id DESC LIMIT ?"
        with self._connect() as db:  # the database reads only the window's rows (LIMIT -1: all of them)
            newest_first = db.execute(query, (self.source_id, session_id, settings["max_messages"] or -1)).fetchall()
        messages, bad = [], []
        for row_id, message_json in reversed(newest_first):
            try:
                data = json.loads(message_json)
                if (version := data.pop("schema_version", None)) != self.SCHEMA_VERSION:
                    raise ValueError(f"schema version {version!r}, this store reads {self.SCHEMA_VERSION}")
                if not isinstance(data.get("role"), str) or type(data.get("contents")) is not list:
                    raise ValueError("not a message")
                messages.append(Message.from_dict(data))
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                bad.append(f"row {row_id}: {error}")
        start, calls = 0, set()  # start after the last tool result whose call is not before it: the API rejects it
        for index, message in enumerate(messages):
            for content in message.contents:
                if content.type == "function_call":
                    calls.add(content.call_id)
                elif content.type == "function_result" and content.call_id not in calls:
                    start, calls = index + 1, set()
        if bad:  # the thread's good messages stay readable, in the error
            error = CorruptHistoryError(f"thread {session_id!r} in {self.database}: unreadable {'; '.join(bad)}")
            error.readable = messages[start:]
            raise error
        return messages[start:]

    def message_count(self, session_id: str) -> int:
        with self._connect() as db:
            query = "SELECT COUNT(*) FROM chat_messages WHERE source_id = ? AND session_id = ?"
            return db.execute(query, (self.source_id, session_id)).fetchone()[0]

    def save_session(self, session: AgentSession, path: Path, *, check_only: bool = False) -> None:
        """Write the session file atomically (temp file + `os.replace`) if it holds the version the thread was read
        at (compare-and-swap). `check_only=True` raises what the save would raise, writing nothing: use it first."""
        settings = self._settings(session.state.setdefault(self.source_id, {}))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the database's write lock makes check-and-replace atomic across processes
            found = self.load_session(path) if os.path.lexists(path) else None
            held = found and (found.session_id, found.state[self.source_id]["version"])
            if held and held != (session.session_id, settings["version"]):
                raise SessionConflictError(
                    f"session file {path} holds version {held[1]} of thread {held[0]!r}, saved by another run; this "
                    f"run's thread {session.session_id!r} is at version {settings['version']}: load the file again "
                    "(this run's messages are in the database) or save to another file"
                )
            data = session.to_dict()
            data["state"][self.source_id]["version"] += 1
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one saver at a time: the lock above
            try:
                with open(temporary, "w", encoding="utf-8") as file:
                    json.dump(data, file, indent=2)
                    file.flush()
                    os.fsync(file.fileno())
                if not check_only:
                    os.replace(temporary, path)
            except OSError as error:
                raise SessionFileError(f"cannot write session file {path}: {error.strerror or error}") from None
            finally:
                with suppress(OSError):  # gone already after a replace
                    os.unlink(temporary)
            settings["version"] += 0 if check_only else 1

    def load_session(self, path: Path) -> AgentSession:
        """A thread from its session file. A FIFO, a device or a huge file is refused (one line), never waited on."""
        try:
            with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
                regular = stat.S_ISREG(os.fstat(file.fileno()).st_mode)
                raw = file.read(self.MAX_SESSION_FILE_BYTES + 1) if regular else b""
        except OSError as error:
            raise SessionFileError(f"cannot read session file {path}: {error.strerror or error}") from None
        try:
            if not regular or len(raw) > self.MAX_SESSION_FILE_BYTES:
                raise ValueError(f"is not a regular file of at most {self.MAX_SESSION_FILE_BYTES} bytes")
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("type") != "session" or not isinstance(data.get("state"), dict):
                raise ValueError("is not a saved agent session")
            if not data.get("session_id") or not isinstance(data["session_id"], str):
                raise ValueError("has no session id")
            settings = data["state"].get(self.source_id)
            if not isinstance(settings, dict) or settings.get("store") != self.STORE_TYPE:
                raise ValueError(f"was not written by {type(self).__name__} (it holds: {', '.join(data['state'])})")
            if settings.get("schema_version") != self.SCHEMA_VERSION:
                raise ValueError(f"uses store schema {settings.get('schema_version')!r}, not {self.SCHEMA_VERSION}")
            if type(settings.get("version")) is not int or settings["version"] < 0:
                raise ValueError(f"has an invalid version: {settings.get('version')!r}")
            self._checked_window(settings.get("max_messages"))
            return AgentSession.from_dict(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SessionFileError(f"session file {path} is not valid JSON text ({error})") from None
        except (ValueError, TypeError, KeyError) as error:
            raise SessionFileError(f"session file {path} {error}") from None

    def _settings(self, state: dict[str, Any] | None) -> dict[str, Any]:
        state = {} if state is None else state
        for key, default in ("store", self.STORE_TYPE), ("schema_version", self.SCHEMA_VERSION), ("version", 0):
            state.setdefault(key, default)
        self._checked_window(state.setdefault("max_messages", self.max_messages))
        return state

    @staticmethod
    def _checked_window(max_messages: Any) -> int | None:
        if max_messages is None or (type(max_messages) is int and 1 <= max_messages < 2**63):
            return max_messages
        raise ValueError(f"max_messages must be None or a whole number from 1 to 2**63 - 1, not {max_messages!r}")


DATABASE_NAME = "chat_history.sqlite3"


@tool
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return f"The weather in {location} is sunny and 18 degrees Celsius."


@dataclass
class Run:
    """One run of the sample; what it did is kept for the reader and the tests."""

    client: OpenAIChatCompletionClient
    replies: dict[tuple[str, str], str] = field(default_factory=dict)  # (thread, question) -> reply
    stored: dict[str, int] = field(default_factory=dict)  # thread -> messages in the database
    window: list[str] = field(default_factory=list)  # roles of the window sent to the model in part 4

    async def ask(self, store: CustomChatMessageStore, name: str, session: AgentSession, *questions: str) -> None:
        # Chat Completions: the Responses client's default store=True would also send the service's copy of the history.
        instructions = "You are a friendly assistant. Answer in one or two sentences."
        agent = Agent(client=self.client, instructions=instructions, tools=[get_weather], context_providers=[store])
        for text in questions:
            print(f"User: {text}")
            self.replies[name, text] = (await agent.run(text, session=session)).text
            print(f"Agent: {self.replies[name, text]}")
        self.stored[name] = store.message_count(session.session_id)


async def continue_thread(run: Run, data_dir: Path, session_file: Path) -> None:
    """A restart: a new store object and agent; the thread comes back from its session file."""
    if not (data_dir / DATABASE_NAME).is_file():
        raise SampleError(f"no {DATABASE_NAME} in {data_dir}: pass the --data-dir of the run that saved {session_file}")
    store = CustomChatMessageStore(data_dir / DATABASE_NAME)
    session = store.load_session(session_file)
    store.save_session(session, session_file, check_only=True)  # a file that cannot be saved fails now, not later
    print(f"Restored thread {session.session_id}: {store.message_count(session.session_id)} messages in the database")
    await run.ask(store, "alice", session, "What is my name?", "Where do I live?")
    store.save_session(session, session_file)
    print(f"Messages stored for this thread: {run.stored['alice']}")


async def demo(run: Run, data_dir: Path) -> None:
    database, files = data_dir / DATABASE_NAME, {name: data_dir / f"{name}.session.json" for name in ("alice", "bob")}
    with suppress(OSError):  # a folder that cannot be made is reported by the store, naming the database
        data_dir.mkdir(parents=True, exist_ok=True)
    print(f"Database: {database}")

    print("\n=== 1. Two users, two threads, one database ===")
    store, alice, bob = CustomChatMessageStore(database), AgentSession(), AgentSession()
    for session, path in ((alice, files["alice"]), (bob, files["bob"])):
        store.save_session(session, path, check_only=True)  # fail before the turns, not after
    await run.ask(store, "alice", alice, "My name is Alice.", "I live in Paris.")
    await run.ask(store, "bob", bob, "My name is Bob.", "Where do I live?")  # Alice's thread is not Bob's

    print("\n=== 2. Save the threads: ids and settings only ===")
    store.save_session(alice, files["alice"])
    store.save_session(bob, files["bob"])
    print(f"{files['alice'].name}:\n{files['alice'].read_text(encoding='utf-8')}")

    print("\n=== 3. Restart: a new store object and agent, Alice's thread from its file; then a new thread ===")
    await continue_thread(run, data_dir, files["alice"])
    await run.ask(CustomChatMessageStore(database), "new", AgentSession(), "What is my name?")  # it knows nothing

    print("\n=== 4. A window of max_messages=4 on a thread with a tool call ===")
    windowed, carol = CustomChatMessageStore(database, max_messages=4), AgentSession()
    await run.ask(windowed, "carol", carol, "My name is Carol.", "What's the weather in Seattle?", "Tell me a joke.")
    run.window = [m.role for m in await windowed.get_messages(carol.session_id, state=carol.state[windowed.source_id])]
    print(f"The model gets {len(run.window)} of {run.stored['carol']} messages: {', '.join(run.window)}")
    await run.ask(windowed, "carol", carol, "What is my name?")  # the window no longer holds it; the database does
    print(f"\nMessages stored per thread: {run.stored}")


async def main(data_dir: Path | None = None, keep: bool = False, resume: Path | None = None) -> Run:
    async with open_backends() as backends:
        run = Run(OpenAIChatCompletionClient(**backends.model.client_kwargs()))
        folder = data_dir or (resume.parent if resume else Path(tempfile.mkdtemp(prefix="chat-store-")))
        try:
            await (continue_thread(run, folder, resume) if resume else demo(run, folder))
        finally:  # also after Ctrl+C or SIGTERM
            await run.client.client.close()
            if not (data_dir or resume or keep):
                shutil.rmtree(folder, ignore_errors=True)
                print(f"\nRemoved {folder} (run with --keep to keep it)")
        if not resume and (data_dir or keep):
            print(f"\nKept {folder}; continue Alice's thread with --resume {folder / 'alice.session.json'}")
        return run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="directory for the database and session files (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory at the end")
    parser.add_argument("--resume", type=Path, metavar="SESSION_FILE", help="continue a thread saved by a kept run")
    run_sample(main(**vars(parser.parse_args())), errors=(ChatStoreError,))
