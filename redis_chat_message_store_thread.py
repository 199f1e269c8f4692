"""A Redis chat message store: conversation threads kept in Redis, per user, across restarts, in a bounded window.

`RedisChatMessageStore` subclasses the framework's `RedisHistoryProvider` (the former `RedisChatMessageStore`) and
keeps its key layout, so either one reads the other's data. It adds what the provider lacks: a save that reads only
the few newest stored messages, saves that concurrent writers cannot interleave, a `max_messages` window that never
begins with a tool result whose call was trimmed, and its own errors for bad settings and corrupt records.
Examples: 1. basic usage, 2. one scope per user, 3. an app restart from a saved session, 4. trimming, 5. cleanup.

Run: `python redis_chat_message_store_thread.py` (fakeredis and the offline model unless REDIS_URL / model settings).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import redis.asyncio as redis
from agent_framework import Agent, AgentSession, InMemoryHistoryProvider, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from agent_framework_redis import RedisHistoryProvider
from redis.asyncio.client import Pipeline

from sample_support import Backends, open_backends, run_sample


class RedisStoreError(Exception):
    """Base of the errors `RedisChatMessageStore` raises."""


class StoreInputError(RedisStoreError, ValueError):
    """A setting, session id or saved session the store refuses."""


class CorruptHistoryError(RedisStoreError, RuntimeError):
    """Stored records that are not messages; `readable` holds the ones of the same read that are."""

    def __init__(self, message: str, readable: list[Message]) -> None:
        super().__init__(message)
        self.readable = readable


_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10))}


def key_segment(value: str, encoded_prefix: str) -> str:
    """RedisHistoryProvider's key segment: plain lower-case text verbatim, anything else base32 (SHA-256 if long)."""
    plain = re.fullmatch(r"[a-z0-9_-][a-z0-9._-]*", value) and not value.endswith(".")
    if plain and value.split(".")[0] not in _RESERVED_NAMES:
        return value
    encoded = encoded_prefix + base64.b32encode(value.encode()).decode().rstrip("=").lower()
    return encoded if len(encoded) <= 180 else f"{encoded_prefix}sha256-{hashlib.sha256(value.encode()).hexdigest()}"


class RedisChatMessageStore(RedisHistoryProvider):
    """Each thread in one Redis list at `chat_messages|v2|<tenant>|<application>|<agent>|<source>|<session id>`.

    A save is one WATCH/MULTI transaction, rerun if another writer changed the list meanwhile: concurrent writers
    lose nothing and each save stays contiguous. `max_messages` is a window Redis applies (LTRIM, so loads stay
    bounded); its cut moves past tool results, so it never starts with a result whose call was trimmed. The
    framework's `CompactionProvider` cannot bound this list: it compacts history kept in session state (Redis keeps
    none there) or the history already loaded, and keeps every message stored.
    """

    def __init__(self, redis_client: redis.Redis, *, max_messages: int | None = None, **settings: Any) -> None:
        if max_messages is not None and (type(max_messages) is not int or max_messages < 1):
            raise StoreInputError(f"max_messages must be a positive integer or None (no limit), not {max_messages!r}")
        super().__init__(redis_client=redis_client, max_messages=max_messages, **settings)
        self.redis = redis_client  # borrowed: whoever opened the connection closes it

    def redis_key(self, session_id: str | None) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise StoreInputError("session_id must be a non-empty string")
        scope = {"tenant": self.tenant_id, "application": self.application_id, "agent": self.agent_id}
        scope |= {"source": self.source_id, "session": session_id}
        segments = ["~none" if v is None else key_segment(v, f"~redis-{k}-") for k, v in scope.items()]
        return "|".join([key_segment(self.key_prefix, "~redis-key-prefix-"), "v2", *segments])

    async def get_messages(self, session_id: str | None, **kwargs: Any) -> list[Message]:
        return self.parse(session_id, await self.redis.lrange(self.redis_key(session_id), 0, -1))

    async def save_messages(self, session_id: str | None, messages: Sequence[Message], **kwargs: Any) -> None:
        key = self.redis_key(session_id)
        if not messages:
            return

        async def append(pipe: Pipeline) -> None:  # runs under WATCH key
            stored = await pipe.llen(key)
            # The framework de-duplicates a save against only the newest len(messages) stored messages: read just those,
            # and let its public in-memory provider apply the same de-duplication rule to them.
            tail = {"messages": self.parse(session_id, await pipe.lrange(key, -len(messages), -1))}
            known = len(tail["messages"])
            await InMemoryHistoryProvider().save_messages(session_id, messages, state=tail)
            new = tail["messages"][known:]
            if not new:
                return
            cut = stored + len(new) - self.max_messages if self.max_messages else 0
            ahead: list[Message] = []
            while cut > 0:  # move the cut past tool results, reading only the few messages from the cut on
                if not ahead:
                    batch = await pipe.lrange(key, cut, cut + 7) if cut < stored else None
                    ahead = new[cut - stored :] if batch is None else self.parse(session_id, batch)
                if not ahead or ahead.pop(0).role != "tool":
                    break
                cut += 1
            pipe.multi()
            pipe.rpush(key, *(json.dumps(message.to_dict()) for message in new))
            if cut > 0:
                pipe.ltrim(key, cut, -1)

        await self.redis.transaction(append, key)

    def parse(self, session_id: str | None, records: list[str]) -> list[Message]:
        """Stored records as messages; a record that is not one raises `CorruptHistoryError` naming the session."""
        messages, bad = [], []
        for index, record in enumerate(records):
            try:
                data = json.loads(record)
                if not isinstance(data, dict) or not isinstance(data.get("role"), str):
                    raise ValueError("not a message object")
                messages.append(Message.from_dict(data))
            except (ValueError, TypeError, AttributeError, KeyError) as error:  # what a malformed record raises
                bad.append(f"#{index}: {type(error).__name__}: {str(error)[:80]}")
        if bad:
            where = f"the Redis history of session {str(session_id)[:100]!r}"
            raise CorruptHistoryError(f"{len(bad)} unreadable record(s) in {where} ({bad[0]})", messages)
        return messages

    async def clear(self, session_id: str | None) -> None:
        await self.redis.delete(self.redis_key(session_id))

    async def message_count(self, session_id: str) -> int:
        return await self.redis.llen(self.redis_key(session_id))


APPLICATION_ID = "thread-samples"
AGENT_ID = "ava"
INSTRUCTIONS = "You are Ava, a friendly assistant. Answer in one or two sentences."


chat_message_store = partial(RedisChatMessageStore, application_id=APPLICATION_ID, agent_id=AGENT_ID)


@tool
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return "12 degrees Celsius and light rain"


@asynccontextmanager
async def open_agent(backends: Backends, store: RedisChatMessageStore) -> AsyncIterator[Agent]:
    # Chat Completions: the history comes from Redis. The Responses client (`OpenAIChatClient`) with its default
    # store=True would also point at the service's own copy of the conversation and send the history twice.
    chat = OpenAIChatCompletionClient(**backends.model.client_kwargs())
    try:
        yield Agent(
            client=chat, name=AGENT_ID, instructions=INSTRUCTIONS, tools=[get_weather], context_providers=[store]
        )
    finally:
        await chat.client.close()


@dataclass
class Outcome:
    """What an example did: the agent's replies, the message counts it showed, the threads it wrote (for cleanup)."""

    replies: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    threads: list[tuple[RedisChatMessageStore, str]] = field(default_factory=list)
    saved_session: str = ""

    async def ask(self, agent: Agent, session: AgentSession, text: str) -> None:
        print(f"User: {text}")
        self.replies.append((await agent.run(text, session=session)).text)
        print(f"Agent: {self.replies[-1]}")

    async def count(self, store: RedisChatMessageStore, session_id: str, label: str = "Messages in Redis") -> None:
        self.counts.append(await store.message_count(session_id))
        print(f"{label}: {self.counts[-1]}")


async def basic_usage(backends: Backends, client: redis.Redis) -> Outcome:
    print("\n=== 1. Basic usage: a Redis chat message store attached to an agent ===")
    outcome, store = Outcome(), chat_message_store(client)
    async with open_agent(backends, store) as agent:
        session = agent.create_session()
        outcome.threads.append((store, session.session_id))
        await outcome.ask(agent, session, "Hello! My name is Alice.")
        await outcome.ask(agent, session, "What is my name?")
    await outcome.count(store, session.session_id, f"Messages at {store.redis_key(session.session_id)}")
    return outcome


async def user_session_management(backends: Backends, client: redis.Redis) -> Outcome:
    print("\n=== 2. User session management: one scope per user, one thread per conversation ===")
    # The tenant comes from who is signed in (here each user is their own tenant), never from the client-supplied
    # session id: a leaked or guessed session id opens nothing in another tenant.
    outcome = Outcome()
    alice_store, bob_store = (chat_message_store(client, tenant_id=f"user-{name}") for name in ("alice", "bob"))
    async with open_agent(backends, alice_store) as alice, open_agent(backends, bob_store) as bob:
        trip, work = alice.create_session(), alice.create_session()
        outcome.threads = [(alice_store, trip.session_id), (alice_store, work.session_id), (bob_store, trip.session_id)]
        await outcome.ask(alice, trip, "My name is Alice and I live in Paris.")
        print("- Alice, a second conversation (new session id, same user):")
        await outcome.ask(alice, work, "Where do I live?")
        print("- Bob, presenting Alice's session id:")
        await outcome.ask(bob, bob.create_session(session_id=trip.session_id), "What is my name?")
        print("- Alice, back in her first conversation:")
        await outcome.ask(alice, trip, "Where do I live?")
    for store, session_id in outcome.threads:
        await outcome.count(store, session_id, f"Messages at {store.redis_key(session_id)}")
    return outcome


async def restart_from_a_saved_session(backends: Backends, client: redis.Redis) -> Outcome:
    print("\n=== 3. App restart: the saved session holds its id, Redis holds the messages ===")
    outcome = Outcome()
    async with backends.redis.new_client() as connection, open_agent(backends, chat_message_store(connection)) as agent:
        session = agent.create_session()
        await outcome.ask(agent, session, "My favorite color is blue.")
        outcome.saved_session = json.dumps(session.to_dict(), indent=2)
        print(f"Saved session:\n{outcome.saved_session}")
    print("- The app stops: its Redis connection, store, chat client and agent are gone. It starts again:")
    store = chat_message_store(client)
    restored = deserialize_session(store, outcome.saved_session)
    await outcome.count(store, restored.session_id)
    async with open_agent(backends, store) as agent:
        await outcome.ask(agent, restored, "What is my favorite color?")
        print("- A brand-new thread has no history:")
        fresh = agent.create_session()
        await outcome.ask(agent, fresh, "What is my favorite color?")
    outcome.threads = [(store, restored.session_id), (store, fresh.session_id)]
    return outcome


async def automatic_trimming(backends: Backends, client: redis.Redis) -> Outcome:
    print("\n=== 4. Automatic trimming with max_messages=6 ===")
    # A plain turn stores 2 messages, the weather turn 4 (user, tool call, tool result, answer). The last turn's cut
    # would keep the tool result without its call, which the model API rejects: the store trims past it (5 kept).
    outcome, store = Outcome(), chat_message_store(client, max_messages=6)
    async with open_agent(backends, store) as agent:
        session = agent.create_session()
        outcome.threads.append((store, session.session_id))
        earlier = ("My name is Alice.", "My favorite color is blue.", "What's the weather in Seattle?")
        for text in (*earlier, "What is my name?", "What is my favorite color?"):
            await outcome.ask(agent, session, text)
            await outcome.count(store, session.session_id)
    print("Kept in Redis, oldest first:")
    for message in await store.get_messages(session.session_id):
        print(f"  {message.role:9} {message.text or [content.type for content in message.contents]}")
    return outcome


async def main() -> list[Outcome]:
    # open_backends checks the Redis connection first: an unreachable REDIS_URL ends the sample with one line.
    async with open_backends(redis=True) as backends, backends.redis.new_client() as client:
        outcomes: list[Outcome] = []
        try:
            for example in (basic_usage, user_session_management, restart_from_a_saved_session, automatic_trimming):
                outcomes.append(await example(backends, client))
        finally:
            print("\n=== 5. Cleanup: clear every thread this run wrote ===")
            threads = [thread for outcome in outcomes for thread in outcome.threads]
            for store, session_id in threads:
                await store.clear(session_id)
            outcomes.append(Outcome(counts=[await store.message_count(session_id) for store, session_id in threads]))
            print(f"Cleared {len(threads)} threads; messages left in them: {sum(outcomes[-1].counts)}")
        return outcomes


def deserialize_session(store: RedisChatMessageStore, text: str) -> AgentSession:
    """A session saved with `session.to_dict()` whose history is in this store; anything else: a one-line error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StoreInputError(f"the saved session is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("type") != "session" or not isinstance(data.get("state", {}), dict):
        raise StoreInputError("the saved session is not an agent session (expected a `to_dict()` object)")
    if not data.get("session_id") or not isinstance(data["session_id"], str):
        raise StoreInputError("the saved session has no session id")
    # Its messages may live elsewhere (in the file, another store, the model service): here it would start empty.
    elsewhere = sorted(set(data.get("state", {})) - {store.source_id})
    if data.get("service_session_id"):
        elsewhere.append(f"service thread {data['service_session_id']}")
    if elsewhere:
        raise StoreInputError(f"the saved session keeps its history elsewhere ({', '.join(elsewhere)}), not in Redis")
    return AgentSession.from_dict(data)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    run_sample(main(), errors=(RedisStoreError,))
