"""A Redis chat message store: conversation threads kept in Redis, per user, across restarts, trimmed.

What it shows, one function per example:
1. Basic usage - a `RedisChatMessageStore` (the framework's `RedisHistoryProvider`, the current name of the
   Redis chat message store) attached to an agent; two turns; the messages are in one Redis list.
2. User session management - every thread's Redis key is scoped by tenant, application, agent and session id;
   a second user cannot see the first user's history, not even by presenting the same session id.
3. Persistence across app restarts - a new Redis connection, store, chat client and agent continue a thread from
   its session id alone; a brand-new thread recalls nothing.
4. Thread serialization - `session.to_dict()` as JSON holds the session id but no messages (Redis has them);
   `AgentSession.from_dict` continues it. `deserialize_session` refuses, with one line, a saved session that is
   corrupt or keeps its history elsewhere (in the file itself, another store, the model service).
5. Automatic trimming - `max_messages` caps the stored history; the oldest messages go first.
6. Cleanup - `clear()` removes each thread this run wrote, and the connection the sample opened is closed.

Before the examples the Redis connection is checked: an unreachable server stops the sample with one line
naming REDIS_URL.

Prerequisites: the packages in requirements.txt (`agent-framework-core`, `agent-framework-openai`,
`agent-framework-redis`, `redis`, `fakeredis`).

Run it
- Offline, no configuration: `python redis_chat_message_store_thread.py` uses the deterministic offline model that
  the support package serves on a loopback port, and an in-process fakeredis.
- Against a real Redis: set REDIS_URL (e.g. `redis://localhost:6379/0` after `redis-server --port 6379`).
- Against OpenAI: set OPENAI_API_KEY and OPENAI_MODEL (optionally OPENAI_BASE_URL). Against Azure OpenAI: set
  AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_MODEL (your deployment), plus AZURE_OPENAI_API_KEY or `az login`.
  Settings are read from the environment or a `.env` file next to this script. DTS_ENDPOINT / DTS_TASKHUB are
  not used here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import redis.asyncio as redis
from agent_framework import Agent, AgentSession, HistoryProvider, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient
from agent_framework_redis import RedisHistoryProvider

from sample_support import Backends, SampleError, open_backends, run_sample

APPLICATION_ID = "thread-samples"
AGENT_ID = "ava"
INSTRUCTIONS = "You are Ava, a friendly assistant. Answer in one or two sentences."


class SessionFileError(SampleError):
    """A saved session this store cannot continue (corrupt, or written for a different store)."""


class RedisChatMessageStore(RedisHistoryProvider):
    """A chat message store keeping each conversation thread in one Redis list.

    The key is `chat_messages|v2|<tenant>|<application>|<agent>|<source>|<session id>`; any part that is not
    plain lower-case text is encoded, so no id can reach outside its own scope. The thread (`AgentSession`)
    carries only its id.
    """

    async def get_messages(
        self, session_id: str | None, *, state: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Message]:
        messages = await super().get_messages(session_id, state=state, **kwargs)
        # `max_messages` trims by count, so the oldest kept message can be a tool result whose call was trimmed.
        # The model API rejects such an orphan (HTTP 400): the history sent to the model starts after it.
        start = 0
        while start < len(messages) and messages[start].role == "tool":
            start += 1
        return messages[start:]

    def redis_key(self, session_id: str) -> str:
        return self._redis_key(session_id)

    async def message_count(self, session_id: str) -> int:
        return await self._redis_client.llen(self.redis_key(session_id))


def chat_message_store(
    client: redis.Redis, *, tenant_id: str | None = None, max_messages: int | None = None
) -> RedisChatMessageStore:
    # The store borrows the connection: whoever opened `client` closes it.
    return RedisChatMessageStore(
        redis_client=client,
        tenant_id=tenant_id,
        application_id=APPLICATION_ID,
        agent_id=AGENT_ID,
        max_messages=max_messages,
    )


@tool
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return "12 degrees Celsius and light rain"


def create_agent(backends: Backends, store: HistoryProvider) -> Agent:
    # Chat Completions: the history comes from Redis. The Responses client (`OpenAIChatClient`) with its default
    # store=True would also point at the service's own copy of the conversation and send the history twice.
    return Agent(
        client=OpenAIChatCompletionClient(**backends.model.client_kwargs()),
        name=AGENT_ID,
        instructions=INSTRUCTIONS,
        tools=[get_weather],
        context_providers=[store],
    )


async def ask(agent: Agent, session: AgentSession, text: str) -> list[Message]:
    """One turn; returns the messages it added to the thread (the user's, then the agent's)."""
    print(f"User: {text}")
    response = await agent.run(text, session=session)
    print(f"Agent: {response.text}")
    return [Message("user", [text]), *response.messages]


# Each example returns the threads it wrote (store, session id), so the cleanup step can clear them.
StoredThreads = list[tuple[RedisChatMessageStore, str]]


async def basic_usage(backends: Backends, client: redis.Redis) -> StoredThreads:
    print("\n=== 1. Basic usage: a Redis chat message store attached to an agent ===")
    store = chat_message_store(client)
    agent = create_agent(backends, store)
    session = agent.create_session()
    await ask(agent, session, "Hello! My name is Alice.")
    await ask(agent, session, "What is my name?")
    print(f"Redis key: {store.redis_key(session.session_id)}")
    print(f"Messages in Redis: {await store.message_count(session.session_id)}")
    return [(store, session.session_id)]


async def user_session_management(backends: Backends, client: redis.Redis, run_id: str) -> StoredThreads:
    print("\n=== 2. User session management: one scope per user, one thread per conversation ===")
    # The tenant scope comes from who is signed in (here: each user is their own tenant), never from the
    # client-supplied session id. So a leaked or guessed session id opens nothing in another tenant.
    alice_store = chat_message_store(client, tenant_id="user-alice")
    bob_store = chat_message_store(client, tenant_id="user-bob")
    alice_agent, bob_agent = create_agent(backends, alice_store), create_agent(backends, bob_store)
    trip = alice_agent.create_session(session_id=f"trip-{run_id}")
    await ask(alice_agent, trip, "My name is Alice and I live in Paris.")

    print("- Alice, a second conversation (new session id, same user):")
    work = alice_agent.create_session(session_id=f"work-{run_id}")
    await ask(alice_agent, work, "Where do I live?")

    print("- Bob, presenting Alice's session id:")
    bob_session = bob_agent.create_session(session_id=trip.session_id)
    await ask(bob_agent, bob_session, "What is my name?")

    print("- Alice, back in her first conversation:")
    await ask(alice_agent, trip, "Where do I live?")
    threads: StoredThreads = [(alice_store, trip.session_id), (alice_store, work.session_id)]
    threads.append((bob_store, bob_session.session_id))
    for store, session_id in threads:
        print(f"{await store.message_count(session_id)} messages at {store.redis_key(session_id)}")
    return threads


async def persistence_across_restarts(backends: Backends, client: redis.Redis, run_id: str) -> StoredThreads:
    print("\n=== 3. Persistence across app restarts ===")
    session_id = f"restart-{run_id}"
    first_connection = backends.redis.new_client()
    try:
        agent = create_agent(backends, chat_message_store(first_connection))
        await ask(agent, agent.create_session(session_id=session_id), "My favorite color is blue.")
    finally:
        await first_connection.aclose()
    print("- The app stops: its Redis connection, store, chat client and agent are gone.")

    print("- The app starts again and continues the thread by its session id:")
    store = chat_message_store(client)
    agent = create_agent(backends, store)
    print(f"Messages in Redis for {session_id}: {await store.message_count(session_id)}")
    await ask(agent, agent.create_session(session_id=session_id), "What is my favorite color?")

    print("- A brand-new thread has no history:")
    fresh = agent.create_session()
    await ask(agent, fresh, "What is my favorite color?")
    return [(store, session_id), (store, fresh.session_id)]


def serialize_session(session: AgentSession) -> str:
    return json.dumps(session.to_dict(), indent=2)


def deserialize_session(store: RedisChatMessageStore, text: str) -> AgentSession:
    """A session saved by `serialize_session`; anything else is refused with a one-line error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SessionFileError(f"the saved session is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("type") != "session":
        raise SessionFileError("the saved session is not an agent session (expected a `to_dict()` object)")
    session_id = data.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise SessionFileError("the saved session has no session id")
    state = data.get("state", {})
    other_stores = sorted(set(state) - {store.source_id}) if isinstance(state, dict) else ["<invalid state>"]
    if other_stores or data.get("service_session_id"):
        # Its messages live somewhere else (in the file itself, a SQLite store, the model service): continuing it
        # here would silently start from an empty history.
        where = ", ".join(other_stores) or f"service thread {data['service_session_id']}"
        raise SessionFileError(f"the saved session keeps its history elsewhere ({where}), not in this Redis store")
    try:
        return AgentSession.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise SessionFileError(f"the saved session cannot be restored ({error})") from None


async def thread_serialization(backends: Backends, client: redis.Redis) -> StoredThreads:
    print("\n=== 4. Thread serialization: the session holds its id, Redis holds the messages ===")
    store = chat_message_store(client)
    agent = create_agent(backends, store)
    session = agent.create_session()
    await ask(agent, session, "I live in Lisbon.")
    saved = serialize_session(session)
    print(f"Serialized session ({len(saved)} characters):\n{saved}")
    print(f"Messages in Redis: {await store.message_count(session.session_id)}")

    restored = deserialize_session(store, saved)
    await ask(create_agent(backends, store), restored, "Where do I live?")
    print(f"Messages in Redis after the restored session's turn: {await store.message_count(restored.session_id)}")
    return [(store, session.session_id)]


def describe(message: Message) -> str:
    parts = []
    for content in message.contents:
        if content.type == "function_call":
            parts.append(f"calls {content.name}({content.arguments})")
        elif content.type == "function_result":
            parts.append(f"result: {content.result}")
        elif content.type == "text":
            parts.append(repr(content.text))
    return ", ".join(parts)


async def automatic_trimming(backends: Backends, client: redis.Redis) -> StoredThreads:
    print("\n=== 5. Automatic trimming with max_messages=6 ===")
    # A plain turn stores 2 messages (user, assistant); the weather turn stores 4 (user, tool call, tool result,
    # answer). With these turns the limit of 6 always falls on a turn boundary, so trimming never keeps a tool
    # result without the call it answers (the model API would reject that history, and the answer would lose its
    # source). Against a real model the turns may differ; the store then skips such an orphan on load.
    store = chat_message_store(client, max_messages=6)
    agent = create_agent(backends, store)
    session = agent.create_session()
    written: list[Message] = []
    for text in (
        "My name is Alice.",
        "My favorite color is blue.",
        "What's the weather in Seattle?",
        "What is my name?",
    ):
        written += await ask(agent, session, text)
        print(f"  (messages written: {len(written)}, in Redis: {await store.message_count(session.session_id)})")
    kept = await store.message_count(session.session_id)
    print("Trimmed, oldest first:")
    for message in written[: len(written) - kept]:
        print(f"  {message.role:9} {describe(message)}")
    print("Kept in Redis:")
    for message in await store.get_messages(session.session_id):
        print(f"  {message.role:9} {describe(message)}")
    return [(store, session.session_id)]


async def cleanup(threads: Sequence[tuple[RedisChatMessageStore, str]]) -> None:
    print("\n=== 6. Cleanup: clear every thread this run wrote ===")
    for store, session_id in threads:
        await store.clear(session_id)
    remaining = [await store.message_count(session_id) for store, session_id in threads]
    print(f"Cleared {len(threads)} threads; messages left in them: {sum(remaining)}")


async def main() -> None:
    # open_backends checks the Redis connection first: an unreachable REDIS_URL ends the sample with one line.
    async with open_backends(redis=True) as backends:
        assert backends.redis is not None
        run_id = uuid.uuid4().hex[:8]  # fresh session ids, so a rerun against a real Redis starts clean
        client = backends.redis.new_client()
        threads: StoredThreads = []
        try:
            threads += await basic_usage(backends, client)
            threads += await user_session_management(backends, client, run_id)
            threads += await persistence_across_restarts(backends, client, run_id)
            threads += await thread_serialization(backends, client)
            threads += await automatic_trimming(backends, client)
        finally:
            await cleanup(threads)
            await client.aclose()
            print("Closed the Redis connection this sample opened.")


if __name__ == "__main__":
    run_sample(main())
