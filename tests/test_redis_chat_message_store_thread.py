"""redis_chat_message_store_thread.py on fakeredis and a real redis-server: what each example leaves in Redis.

Every test taking `redis_backend` runs twice (see conftest). The examples are called with the test's Redis so
the stored lists can be read back before the cleanup step removes them. conftest fails any test during which
the offline model answered HTTP 400, except the two marked `expects_model_rejections`, which provoke one on purpose.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import fakeredis
import pytest
import redis.asyncio as redis
from agent_framework import Agent, AgentSession, Message
from agent_framework.exceptions import ChatClientException
from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient
from agent_framework_redis import RedisHistoryProvider

import redis_chat_message_store_thread as sample
from redis_chat_message_store_thread import (
    RedisChatMessageStore,
    StoredThreads,
    chat_message_store,
    create_agent,
    deserialize_session,
    get_weather,
    main,
)
from sample_support import Backends, RedisBackend, run_sample, select_model
from sample_support.offline_model import OfflineModelServer
from sample_support.redis_backend import free_loopback_port
from tests.conftest import ScriptRunner, expected_banner

SCRIPT = "redis_chat_message_store_thread.py"
Example = Callable[[Backends, redis.Redis], Awaitable[StoredThreads]]


@pytest.fixture
def backends(redis_backend: RedisBackend, offline_model: OfflineModelServer) -> Backends:
    return Backends(selected_model=select_model(), redis=redis_backend)


async def stored(client: redis.Redis, store: RedisChatMessageStore, session_id: str) -> list[Message]:
    """The raw Redis list, not the store's view of it (which skips an orphan tool result)."""
    return [Message.from_dict(json.loads(item)) for item in await client.lrange(store.redis_key(session_id), 0, -1)]


@dataclass
class Thread:
    tenant_id: str | None
    session_id: str
    key: str
    messages: list[Message]

    @property
    def texts(self) -> list[str]:
        return [message.text for message in self.messages]


def run_example(backends: Backends, example: Example) -> list[Thread]:
    """Run one example; returns what each thread it wrote holds in Redis, then clears them."""

    async def go() -> list[Thread]:
        assert backends.redis is not None
        client = backends.redis.new_client()
        threads: StoredThreads = []
        try:
            threads = await example(backends, client)
            return [
                Thread(
                    store.tenant_id, session_id, store.redis_key(session_id), await stored(client, store, session_id)
                )
                for store, session_id in threads
            ]
        finally:
            for store, session_id in threads:
                await store.clear(session_id)
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.timeout(30)
def test_main_runs_every_example_and_leaves_nothing_behind(
    redis_backend: RedisBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    async def sample_keys() -> set[str]:
        client = redis_backend.new_client()
        try:
            return set(await client.keys(f"*|{sample.APPLICATION_ID}|*"))
        finally:
            await client.aclose()

    before = asyncio.run(sample_keys()) if redis_backend.url else set()
    asyncio.run(main())
    output = capsys.readouterr().out

    headings = [line for line in output.splitlines() if line.startswith("=== ")]
    assert [heading[4:6] for heading in headings] == ["1.", "2.", "3.", "4.", "5.", "6."]
    expected_redis = "Redis at" if redis_backend.url else "fakeredis"
    assert output.splitlines()[0].startswith("Backends: model=offline model") and expected_redis in output
    assert "Cleared 8 threads; messages left in them: 0" in output
    if redis_backend.url:  # main() used its own fakeredis otherwise; on the real server, check it cleaned up
        assert asyncio.run(sample_keys()) == before


@pytest.mark.timeout(30)
def test_basic_usage_keeps_two_turns_in_one_list(backends: Backends) -> None:
    (thread,) = run_example(backends, sample.basic_usage)

    assert [m.role for m in thread.messages] == ["user", "assistant", "user", "assistant"]
    assert thread.texts[2:] == ["What is my name?", "Your name is Alice."]
    assert thread.key.startswith(f"chat_messages|v2|~none|{sample.APPLICATION_ID}|{sample.AGENT_ID}|")


@pytest.mark.timeout(30)
def test_users_and_conversations_are_isolated(backends: Backends) -> None:
    threads = run_example(backends, lambda b, c: sample.user_session_management(b, c, "test"))

    by_owner = {(t.tenant_id, t.session_id): t for t in threads}
    trip, work = by_owner["user-alice", "trip-test"], by_owner["user-alice", "work-test"]
    bob = by_owner["user-bob", "trip-test"]  # Bob presented Alice's session id
    assert len({t.key for t in threads}) == 3
    assert trip.texts == [
        "My name is Alice and I live in Paris.",
        "Nice to meet you, Alice! Good to know that you live in Paris.",
        "Where do I live?",
        "You live in Paris.",
    ]
    assert work.texts == ["Where do I live?", "I don't know where you live - you haven't told me in this conversation."]
    assert bob.texts == ["What is my name?", "I don't know your name yet - you haven't told me in this conversation."]


@pytest.mark.timeout(30)
def test_restart_recalls_and_a_fresh_thread_does_not(backends: Backends) -> None:
    restarted, fresh = run_example(backends, lambda b, c: sample.persistence_across_restarts(b, c, "test"))

    assert restarted.session_id == "restart-test"
    assert restarted.texts == [
        "My favorite color is blue.",
        "Good to know: your favorite color is blue.",
        "What is my favorite color?",
        "Your favorite color is blue.",
    ]
    assert fresh.texts == [
        "What is my favorite color?",
        "I don't know your favorite color - you haven't told me in this conversation.",
    ]


@pytest.mark.timeout(30)
def test_serialized_thread_holds_no_messages_and_continues(
    backends: Backends, capsys: pytest.CaptureFixture[str]
) -> None:
    (thread,) = run_example(backends, sample.thread_serialization)
    output = capsys.readouterr().out

    saved = output.split("Serialized session (", 1)[1].split(":\n", 1)[1].split("\n}\n", 1)[0] + "\n}"
    assert json.loads(saved) == {
        "type": "session",
        "session_id": thread.session_id,
        "service_session_id": None,
        "state": {"redis_memory": {}},
    }
    assert thread.texts == [
        "I live in Lisbon.",
        "Good to know that you live in Lisbon.",
        "Where do I live?",
        "You live in Lisbon.",
    ]


@pytest.mark.timeout(30)
def test_trimming_caps_the_count_drops_the_oldest_and_keeps_the_tool_pair(
    backends: Backends, offline_model: OfflineModelServer
) -> None:
    tool_calls = len(offline_model.tool_calls_emitted())
    invocations = get_weather.invocation_count
    (thread,) = run_example(backends, sample.automatic_trimming)

    assert [m.role for m in thread.messages] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert thread.texts[0] == "What's the weather in Seattle?"
    assert not any("Alice" in text or "blue" in text for text in thread.texts)  # the two oldest turns went first
    (call,) = thread.messages[1].contents
    (result,) = thread.messages[2].contents
    assert (call.type, call.name, result.type, result.call_id) == (
        "function_call",
        "get_weather",
        "function_result",
        call.call_id,
    )
    assert offline_model.tool_calls_emitted()[tool_calls:] == [("get_weather", {"location": "Seattle"})]
    assert get_weather.invocation_count == invocations + 1
    assert result.result == get_weather(location="Seattle")
    assert thread.texts[3] == f"The weather in Seattle: {result.result}."
    assert thread.texts[5] == "I don't know your name yet - you haven't told me in this conversation."


@pytest.mark.timeout(30)
@pytest.mark.expects_model_rejections
def test_store_skips_an_orphan_tool_result_that_trimming_left(
    backends: Backends, offline_model: OfflineModelServer
) -> None:
    """max_messages=2 keeps [tool result, answer]: the sample's store still sends a valid history, the plain
    provider's history is rejected by the model endpoint."""

    async def go() -> None:
        assert backends.redis is not None
        client = backends.redis.new_client()
        guarded = chat_message_store(client, max_messages=2)
        plain = RedisHistoryProvider(redis_client=client, application_id=sample.APPLICATION_ID, max_messages=2)
        session_id = f"orphan-{uuid.uuid4()}"

        async def trimmed_to_an_orphan(store: RedisHistoryProvider) -> tuple[Agent, AgentSession]:
            agent = create_agent(backends, store)
            session = agent.create_session(session_id=session_id)
            await agent.run("What's the weather in Seattle?", session=session)
            raw = await client.lrange(store._redis_key(session_id), 0, -1)
            assert [json.loads(item)["role"] for item in raw] == ["tool", "assistant"]
            return agent, session

        try:
            agent, session = await trimmed_to_an_orphan(guarded)
            assert [m.role for m in await guarded.get_messages(session_id)] == ["assistant"]
            rejections = len(offline_model.rejections)
            await agent.run("Tell me a joke.", session=session)
            assert offline_model.rejections[rejections:] == []

            agent, session = await trimmed_to_an_orphan(plain)
            with pytest.raises(ChatClientException):
                await agent.run("Tell me a joke.", session=session)
            (rejection,) = offline_model.rejections[rejections:]
            assert "role 'tool' must be a response to a preceding message" in rejection
        finally:
            for store in (guarded, plain):
                await store.clear(session_id)
            await client.aclose()

    asyncio.run(go())


@pytest.mark.timeout(30)
@pytest.mark.expects_model_rejections
def test_responses_client_with_a_redis_store_is_caught(
    backends: Backends, offline_model: OfflineModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mistake the sample avoids: swap in the Responses client (store=True) and the history goes twice."""
    monkeypatch.setattr(sample, "OpenAIChatCompletionClient", OpenAIChatClient)
    rejections = len(offline_model.rejections)

    async def go() -> None:
        assert backends.redis is not None
        client = backends.redis.new_client()
        pattern = f"*|{sample.APPLICATION_ID}|*"
        before = set(await client.keys(pattern))
        try:
            with pytest.raises(ChatClientException):
                await sample.basic_usage(backends, client)
        finally:
            for key in set(await client.keys(pattern)) - before:
                await client.delete(key)
            await client.aclose()

    asyncio.run(go())
    (rejection,) = offline_model.rejections[rejections:]
    assert "the history was sent twice" in rejection


async def in_memory_session_json(backends: Backends) -> str:
    agent = Agent(client=OpenAIChatCompletionClient(**backends.model.client_kwargs()))
    session = agent.create_session()
    await agent.run("My name is Alice.", session=session)
    return json.dumps(session.to_dict())


BAD_SESSIONS = {
    "corrupt JSON": ('{"type": "session", "session_id": ', "not valid JSON"),
    "not a session": ("[1, 2]", "not an agent session"),
    "empty session id": ('{"type": "session", "session_id": "", "state": {}}', "has no session id"),
    "SQLite store session": (
        '{"type": "session", "session_id": "s1", "state": {"custom_chat_message_store": {"store": "sqlite"}}}',
        "history elsewhere (custom_chat_message_store)",
    ),
    "service thread": (
        '{"type": "session", "session_id": "s1", "service_session_id": "resp_1", "state": {}}',
        "history elsewhere (service thread resp_1)",
    ),
    "in-memory session": (None, "history elsewhere (in_memory)"),
}


@pytest.mark.parametrize("case", BAD_SESSIONS)
def test_bad_saved_session_is_a_one_line_error(
    case: str, offline_model: OfflineModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD_SESSIONS[case]
    backends = Backends(selected_model=select_model())

    async def restore() -> None:
        client = RedisBackend(None, fakeredis.FakeServer()).new_client()
        try:
            deserialize_session(chat_message_store(client), text or await in_memory_session_json(backends))
        finally:
            await client.aclose()

    with pytest.raises(SystemExit) as exit_info:
        run_sample(restore())
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: the saved session ") and expected in line


# Long ids: a lower-case one stays verbatim in the key, one that needs encoding is hashed past a length limit.
HOSTILE_IDS = ["../../etc/passwd", 'it\'s "quoted"', "a|b", "|", "Alice", "x" * 10_000, "x" * 9_999 + "y", "X" * 10_000]


@pytest.mark.timeout(30)
def test_hostile_session_ids_stay_inside_their_scope(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        client = redis_backend.new_client()
        tenant = f"user-{uuid.uuid4().hex}"
        alice = chat_message_store(client, tenant_id=tenant)
        bob = chat_message_store(client, tenant_id=f"{tenant}-bob")
        # A tenant spelled to end where Alice's scope and half of the id "a|b" would meet, if ids were not encoded.
        forged = chat_message_store(
            client, tenant_id=f"{tenant}|{sample.APPLICATION_ID}|{sample.AGENT_ID}|redis_memory|a"
        )
        try:
            for number, session_id in enumerate(HOSTILE_IDS):
                await alice.save_messages(session_id, [Message("user", [f"secret {number}"])])
            prefix = f"chat_messages|v2|{tenant}|{sample.APPLICATION_ID}|{sample.AGENT_ID}|redis_memory|"
            keys = set(await client.keys(f"*{tenant}*"))
            assert keys == {alice.redis_key(session_id) for session_id in HOSTILE_IDS}
            assert len(keys) == len(HOSTILE_IDS)  # the two long ids that differ in their last character: two keys
            for key in keys:
                segment = key.removeprefix(prefix)
                assert key.startswith(prefix) and "|" not in segment and "/" not in segment
            for number, session_id in enumerate(HOSTILE_IDS):
                assert [m.text for m in await alice.get_messages(session_id)] == [f"secret {number}"]
                assert await bob.get_messages(session_id) == []
                assert await forged.get_messages(session_id) == []
            assert await forged.get_messages("b") == []
            with pytest.raises(ValueError, match="session_id must be a non-empty string"):
                await alice.save_messages("", [Message("user", ["secret"])])
            assert set(await client.keys(f"*{tenant}*")) == keys
        finally:
            for session_id in HOSTILE_IDS:
                await alice.clear(session_id)
            await client.aclose()

    asyncio.run(go())


def test_unreachable_redis_is_one_line_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"  # nothing listens there
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(SystemExit) as exit_info:
        run_sample(main())
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: cannot reach Redis at REDIS_URL={url} (")
    assert captured.out == ""  # stopped before the first example


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(part in lines[0] for part in expected_banner(redis=True))
    for expected in (
        "Agent: Your name is Alice.",
        "Messages in Redis: 4",
        "Agent: I don't know your name yet - you haven't told me in this conversation.",
        "Agent: You live in Paris.",
        "Agent: Your favorite color is blue.",
        "Agent: I don't know your favorite color - you haven't told me in this conversation.",
        "Agent: You live in Lisbon.",
        "  (messages written: 10, in Redis: 6)",
        "Cleared 8 threads; messages left in them: 0",
    ):
        assert expected in lines
