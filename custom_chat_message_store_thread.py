"""A custom chat message store: conversation threads persisted in SQLite, across sessions and restarts.

What it shows
- `CustomChatMessageStore`, a `HistoryProvider` subclass (the current name of a chat message store) that keeps
  every conversation thread in one SQLite file, keyed by session id: `save_messages` appends one row per new
  message, `get_messages` reads them back in order, optionally only the last `max_messages` (a window that
  never begins with a tool result whose tool call fell outside it).
- Its own serialization: `store.serialize_session(session)` / `store.deserialize_session(text)` turn a thread
  (`AgentSession`) into JSON and back. The JSON holds the session id and the store settings; the messages stay
  in the database.
- Two users talking in the same database without seeing each other's history, then a simulated restart (new
  client, new store object, new agent, session read back from its JSON file) that continues a conversation and
  recalls an earlier fact, while a brand-new session recalls nothing.

Prerequisites: the packages in requirements.txt (`agent-framework-core`, `agent-framework-openai`). SQLite
ships with Python.

Run it
- Offline, no configuration: `python custom_chat_message_store_thread.py` talks to the deterministic offline
  model that the support package serves on a loopback port.
- Against OpenAI: set OPENAI_API_KEY and OPENAI_MODEL (optionally OPENAI_BASE_URL).
- Against Azure OpenAI: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_MODEL (your deployment), plus
  AZURE_OPENAI_API_KEY or sign in with `az login`.
  Settings are read from the environment or a `.env` file next to this script. REDIS_URL and
  DTS_ENDPOINT/DTS_TASKHUB are not used here.
- The database and session files go to a new temporary directory, removed at the end; `--keep` keeps it, and
  `--data-dir DIR` puts them in DIR (kept). A kept session continues in a later process with
  `python custom_chat_message_store_thread.py --resume DIR/alice.session.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from agent_framework import Agent, AgentSession, HistoryProvider, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient

from sample_support import Backends, SampleError, open_backends, run_sample

DATABASE_NAME = "chat_history.sqlite3"
STORE_TYPE = "sqlite-chat-message-store"
SCHEMA_VERSION = 1


class SessionFileError(SampleError):
    """A saved session that this store cannot continue (corrupt, or written by a different store)."""


class CustomChatMessageStore(HistoryProvider):
    """A chat message store that keeps every conversation thread in one SQLite database.

    One row per message, in the order they were saved. The session (thread) only carries its id and
    the store settings under `session.state[source_id]`; `max_messages` set there is the window of
    history sent to the model for that thread (None = everything).
    """

    DEFAULT_SOURCE_ID = "custom_chat_message_store"

    def __init__(self, database: Path, *, max_messages: int | None = None, source_id: str = DEFAULT_SOURCE_ID) -> None:
        super().__init__(source_id)
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be a positive number or None")
        self.database = database
        self.max_messages = max_messages
        with self._connect() as db:
            # WAL lets readers (another process, another store object) see committed rows while a writer appends.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS chat_messages ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " session_id TEXT NOT NULL,"
                " role TEXT NOT NULL,"
                " message_json TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS chat_messages_by_session ON chat_messages (session_id, id)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection whose `with` block is one transaction (commit, or rollback on error)."""
        try:
            connection = sqlite3.connect(self.database, timeout=10)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise SampleError(f"chat database {self.database}: {error}") from None

    # --- HistoryProvider: what the agent calls before and after every run ---

    async def get_messages(
        self, session_id: str | None, *, state: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Message]:
        settings = self._settings(state)
        rows = await asyncio.to_thread(self._read, _checked(session_id), settings["max_messages"])
        return [Message.from_dict(json.loads(message_json)) for message_json in rows]

    async def save_messages(
        self,
        session_id: str | None,
        messages: Sequence[Message],
        *,
        state: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # The agent hands over only this run's new messages, so saving is a plain append: no re-read.
        self._settings(state)
        rows = [(_checked(session_id), message.role, json.dumps(message.to_dict())) for message in messages]
        await asyncio.to_thread(self._append, rows)

    def _settings(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """The store settings a thread carries; a thread meeting this store for the first time gets its defaults."""
        if state is None:
            return {"max_messages": self.max_messages}
        state.setdefault("store", STORE_TYPE)
        state.setdefault("schema_version", SCHEMA_VERSION)
        state.setdefault("max_messages", self.max_messages)
        return state

    def _read(self, session_id: str, max_messages: int | None) -> list[str]:
        with self._connect() as db:
            newest_first = db.execute(
                "SELECT role, message_json FROM chat_messages WHERE session_id = ? ORDER BY id DESC LIMIT ?",
                (session_id, -1 if max_messages is None else max_messages),
            ).fetchall()
        window = newest_first[::-1]
        # A tool result whose call was cut off by the window is rejected by the model API: start after it.
        while window and window[0][0] == "tool":
            window.pop(0)
        return [message_json for _, message_json in window]

    def _append(self, rows: list[tuple[str, str, str]]) -> None:
        with self._connect() as db:
            db.executemany("INSERT INTO chat_messages (session_id, role, message_json) VALUES (?, ?, ?)", rows)

    # --- What the sample shows about the store ---

    def message_count(self, session_id: str) -> int:
        with self._connect() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", (session_id,)).fetchone()
        return count

    def serialize_session(self, session: AgentSession) -> str:
        """The thread as JSON: its id and this store's settings. The messages stay in the database."""
        self._settings(session.state.setdefault(self.source_id, {}))
        return json.dumps(session.to_dict(), indent=2)

    def deserialize_session(self, text: str, origin: str = "session JSON") -> AgentSession:
        """Rebuild a thread from `serialize_session` output; refuse anything else with a one-line error."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SessionFileError(f"{origin} is not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("type") != "session":
            raise SessionFileError(f"{origin} is not a saved agent session")
        session_id = data.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise SessionFileError(f"{origin} has no session id")
        state = data.get("state")
        settings = state.get(self.source_id) if isinstance(state, dict) else None
        if not isinstance(settings, dict) or settings.get("store") != STORE_TYPE:
            found = ", ".join(sorted(state)) if isinstance(state, dict) and state else "none"
            raise SessionFileError(
                f"{origin} was not written by {type(self).__name__} (state it holds: {found}); "
                "continue it with the store that wrote it"
            )
        if settings.get("schema_version") != SCHEMA_VERSION:
            raise SessionFileError(
                f"{origin} uses store schema {settings.get('schema_version')!r}, not {SCHEMA_VERSION}"
            )
        window = settings.get("max_messages")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise SessionFileError(f"{origin} has an invalid max_messages setting: {window!r}")
        try:
            return AgentSession.from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise SessionFileError(f"{origin} cannot be restored ({error})") from None


def _checked(session_id: str | None) -> str:
    if not session_id:
        raise ValueError("CustomChatMessageStore needs a session id to know which thread to use")
    return session_id


@tool
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return f"The weather in {location} is sunny and 18 degrees Celsius."


def create_agent(backends: Backends, store: CustomChatMessageStore) -> Agent:
    # Chat Completions: the history is sent from our store. (The Responses client with its default store=True
    # would also chain the service's own copy, sending the history twice.)
    return Agent(
        client=OpenAIChatCompletionClient(**backends.model.client_kwargs()),
        name="assistant",
        instructions="You are a friendly assistant. Answer in one or two sentences.",
        tools=[get_weather],
        context_providers=[store],
    )


async def ask(agent: Agent, session: AgentSession, text: str) -> None:
    print(f"User: {text}")
    response = await agent.run(text, session=session)
    print(f"Agent: {response.text}")


def save_session(store: CustomChatMessageStore, session: AgentSession, path: Path) -> None:
    path.write_text(store.serialize_session(session), encoding="utf-8")


def load_session(store: CustomChatMessageStore, path: Path) -> AgentSession:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SessionFileError(f"cannot read session file {path}: {error}") from None
    return store.deserialize_session(text, origin=f"session file {path}")


async def continue_conversation(backends: Backends, data_dir: Path, session_file: Path) -> None:
    """A restart: new store object, new client and agent; the thread comes back from its JSON file."""
    database = data_dir / DATABASE_NAME
    if not database.is_file():
        raise SampleError(f"no chat database at {database}: pass the --data-dir of the run that saved {session_file}")
    store = CustomChatMessageStore(database)
    session = load_session(store, session_file)
    stored = store.message_count(session.session_id)
    if stored == 0:
        raise SessionFileError(
            f"{database} holds no messages for session {session.session_id} from {session_file}; "
            "pass the --data-dir of the run that saved it"
        )
    print(f"Restored session {session.session_id} from {session_file.name}: {stored} messages in the database")
    agent = create_agent(backends, store)
    await ask(agent, session, "What is my name?")
    await ask(agent, session, "Where do I live?")
    save_session(store, session, session_file)
    print(f"Messages stored for this session: {store.message_count(session.session_id)}")


async def demo(backends: Backends, data_dir: Path) -> None:
    database = data_dir / DATABASE_NAME
    print(f"Database: {database}")

    print("\n=== 1. Two users, two threads, one database ===")
    store = CustomChatMessageStore(database)
    agent = create_agent(backends, store)
    alice, bob = agent.create_session(), agent.create_session()
    await ask(agent, alice, "My name is Alice.")
    await ask(agent, alice, "I live in Paris.")
    await ask(agent, bob, "My name is Bob.")
    await ask(agent, bob, "Where do I live?")  # Alice's thread is not Bob's: he never said.
    thread_ids = {"alice": alice.session_id, "bob": bob.session_id}
    print(f"Stored messages: alice={store.message_count(alice.session_id)} bob={store.message_count(bob.session_id)}")

    print("\n=== 2. Serialize the threads: ids and settings only ===")
    alice_file, bob_file = data_dir / "alice.session.json", data_dir / "bob.session.json"
    save_session(store, alice, alice_file)
    save_session(store, bob, bob_file)
    print(f"{alice_file.name}:\n{alice_file.read_text(encoding='utf-8')}")

    print("\n=== 3. Restart: new client, new store object, new agent; Alice's thread from its file ===")
    del agent, store, alice, bob
    await continue_conversation(backends, data_dir, alice_file)

    print("\n=== 4. A new thread starts empty ===")
    store = CustomChatMessageStore(database)
    agent = create_agent(backends, store)
    await ask(agent, agent.create_session(), "What is my name?")

    print("\n=== 5. A window of max_messages=4 on a thread with a tool call ===")
    windowed_store = CustomChatMessageStore(database, max_messages=4)
    agent = create_agent(backends, windowed_store)
    carol = agent.create_session()
    await ask(agent, carol, "My name is Carol.")
    await ask(agent, carol, "What's the weather in Seattle?")
    await ask(agent, carol, "Tell me a joke.")
    stored = windowed_store.message_count(carol.session_id)
    window = await windowed_store.get_messages(carol.session_id, state=carol.state[windowed_store.source_id])
    print(f"Stored: {stored} messages; the model gets {len(window)}: {', '.join(m.role for m in window)}")
    print(f"Tool results dropped from the window's start (their call is outside it): {min(stored, 4) - len(window)}")
    await ask(agent, carol, "What is my name?")  # The window no longer holds it; the database still does.

    print("\n=== Stored messages per thread ===")
    for name, session_id in {**thread_ids, "carol": carol.session_id}.items():
        print(f"{name}: {store.message_count(session_id)}")


async def main(data_dir: Path | None = None, keep: bool = False, resume: Path | None = None) -> None:
    async with open_backends() as backends:
        if resume is not None:
            await continue_conversation(backends, data_dir or resume.parent, resume)
            return
        if data_dir is not None:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SampleError(f"cannot use --data-dir {data_dir}: {error}") from None
            await demo(backends, data_dir)
            return
        temporary = Path(tempfile.mkdtemp(prefix="chat-store-"))
        try:
            await demo(backends, temporary)
        finally:
            if keep:
                print(f"\nKept {temporary}; continue Alice's thread with --resume {temporary / 'alice.session.json'}")
            else:
                shutil.rmtree(temporary, ignore_errors=True)
                print(f"\nRemoved {temporary} (run with --keep to keep it)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="directory for the database and session files (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory at the end")
    parser.add_argument("--resume", type=Path, metavar="SESSION_FILE", help="continue a thread saved by a kept run")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    run_sample(main(args.data_dir, args.keep, args.resume))
