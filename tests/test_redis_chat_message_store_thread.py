"""redis_chat_message_store_thread.py on fakeredis and a real redis-server: what the store and its examples leave.

Every test taking `redis_backend` runs twice (see conftest). The examples are called with the test's Redis so the
stored lists can be read back before they are cleared. conftest fails any test during which the offline model
answered HTTP 400, except those marked `expects_model_rejections`, which provoke one on purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as redis
from agent_framework import Agent, Content, Message
from agent_framework.exceptions import ChatClientException
from agent_framework.openai import OpenAIChatClient
from agent_framework_redis import RedisHistoryProvider

import redis_chat_message_store_thread as sample
from redis_chat_message_store_thread import (
    CorruptHistoryError,
    Outcome,
    RedisChatMessageStore,
    RedisStoreError,
    StoreInputError,
    chat_message_store,
    deserialize_session,
    get_weather,
    main,
    open_agent,
)
from sample_support import Backends, RedisBackend, run_sample, select_model
from sample_support.offline_model import OfflineModelServer
from tests.conftest import ScriptRunner, expected_banner
from tests.local_servers import free_loopback_port
from tests.standalone import run_standalone

SCRIPT = "redis_chat_message_store_thread.py"
Example = Callable[[Backends, redis.Redis], Awaitable[Outcome]]


@pytest.fixture
def backends(redis_backend: RedisBackend, offline_model: OfflineModelServer) -> Backends:
    return Backends(selected_model=select_model(), redis=redis_backend)


@asynccontextmanager
async def connection(redis_backend: RedisBackend) -> Any:
    client = redis_backend.new_client()
    try:
        yield client
    finally:
        await client.aclose()


def user(text: str, message_id: str | None = None) -> Message:
    return Message("user", [text], message_id=message_id)


def assistant(text: str, message_id: str | None = None) -> Message:
    return Message("assistant", [text], message_id=message_id)


def tool_turn(number: int) -> list[Message]:
    """A tool-calling turn as the framework stores it: question, call, result, answer."""
    call_id = f"call-{number}"
    return [
        user(f"question {number}"),
        Message("assistant", [Content.from_function_call(call_id=call_id, name="get_weather", arguments="{}")]),
        Message("tool", [Content.from_function_result(call_id=call_id, result=f"result {number}")]),
        assistant(f"answer {number}"),
    ]


def raw(records: Sequence[str]) -> list[dict[str, Any]]:
    return [json.loads(record) for record in records]


def run_example(backends: Backends, example: Example) -> tuple[Outcome, list[list[Message]]]:
    """Run one example; returns its outcome and what each thread it wrote holds in Redis, then clears them."""

    async def go() -> tuple[Outcome, list[list[Message]]]:
        assert backends.redis is not None
        async with connection(backends.redis) as client:
            outcome = await example(backends, client)
            try:
                stored = [
                    [Message.from_dict(item) for item in raw(await client.lrange(store.redis_key(session_id), 0, -1))]
                    for store, session_id in outcome.threads
                ]
            finally:
                for store, session_id in outcome.threads:
                    await store.clear(session_id)
            return outcome, stored

    return asyncio.run(go())


def texts(messages: list[Message]) -> list[str]:
    return [message.text for message in messages]


# --- the examples -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_main_runs_every_example_and_leaves_nothing_behind(redis_backend: RedisBackend) -> None:
    async def sample_keys() -> set[str]:
        async with connection(redis_backend) as client:
            return set(await client.keys(f"*|{sample.APPLICATION_ID}|*"))

    before = asyncio.run(sample_keys()) if redis_backend.url else set()
    outcomes = asyncio.run(main())

    basic, users, restart, trimming, cleanup = outcomes
    assert basic.replies[-1] == "Your name is Alice." and basic.counts == [4]
    assert users.replies[-1] == "You live in Paris." and users.counts == [4, 2, 2]
    assert restart.replies[1:] == [
        "Your favorite color is blue.",
        "I don't know your favorite color - you haven't told me in this conversation.",
    ]
    assert trimming.counts == [2, 4, 6, 6, 5]
    assert cleanup.counts == [0] * 7 and cleanup.threads == []
    if redis_backend.url:  # main() used its own fakeredis otherwise; on the real server, check it cleaned up
        assert asyncio.run(sample_keys()) == before


@pytest.mark.timeout(30)
def test_basic_usage_keeps_two_turns_in_one_list(backends: Backends) -> None:
    outcome, (messages,) = run_example(backends, sample.basic_usage)

    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert texts(messages)[2:] == ["What is my name?", "Your name is Alice."]
    ((store, session_id),) = outcome.threads
    assert store.redis_key(session_id).startswith(f"chat_messages|v2|~none|{sample.APPLICATION_ID}|{sample.AGENT_ID}|")


@pytest.mark.timeout(30)
def test_users_and_conversations_are_isolated(backends: Backends) -> None:
    outcome, (trip, work, bob) = run_example(backends, sample.user_session_management)

    (alice_store, trip_id), (_, work_id), (bob_store, bob_id) = outcome.threads
    assert bob_id == trip_id != work_id  # Bob presented Alice's session id
    assert (alice_store.tenant_id, bob_store.tenant_id) == ("user-alice", "user-bob")
    assert len({store.redis_key(session_id) for store, session_id in outcome.threads}) == 3
    assert texts(trip) == [
        "My name is Alice and I live in Paris.",
        "Nice to meet you, Alice! Good to know that you live in Paris.",
        "Where do I live?",
        "You live in Paris.",
    ]
    assert texts(work) == [
        "Where do I live?",
        "I don't know where you live - you haven't told me in this conversation.",
    ]
    assert texts(bob) == ["What is my name?", "I don't know your name yet - you haven't told me in this conversation."]


@pytest.mark.timeout(30)
def test_restart_recalls_from_the_saved_session_and_a_fresh_thread_does_not(backends: Backends) -> None:
    outcome, (restarted, fresh) = run_example(backends, sample.restart_from_a_saved_session)

    (_, session_id), _ = outcome.threads
    assert json.loads(outcome.saved_session) == {  # the saved session holds its id and no messages
        "type": "session",
        "session_id": session_id,
        "service_session_id": None,
        "state": {"redis_memory": {}},
    }
    assert outcome.counts == [2]  # what the restarted app found in Redis before its first turn
    assert texts(restarted) == [
        "My favorite color is blue.",
        "Good to know: your favorite color is blue.",
        "What is my favorite color?",
        "Your favorite color is blue.",
    ]
    assert texts(fresh) == [
        "What is my favorite color?",
        "I don't know your favorite color - you haven't told me in this conversation.",
    ]


@pytest.mark.timeout(30)
def test_trimming_caps_the_count_drops_the_oldest_and_never_starts_on_a_tool_result(
    backends: Backends, offline_model: OfflineModelServer
) -> None:
    tool_calls = len(offline_model.tool_calls_emitted())
    invocations = get_weather.invocation_count
    outcome, (messages,) = run_example(backends, sample.automatic_trimming)

    assert outcome.counts == [2, 4, 6, 6, 5]  # the last cut would have started on the tool result: it went too
    assert [m.role for m in messages] == ["assistant", "user", "assistant", "user", "assistant"]
    assert texts(messages)[0] == f"The weather in Seattle: {get_weather(location='Seattle')}."
    assert not any("Alice" in text or "blue" in text for text in texts(messages))  # the oldest turns went first
    assert outcome.replies[3:] == [
        "I don't know your name yet - you haven't told me in this conversation.",
        "I don't know your favorite color - you haven't told me in this conversation.",
    ]
    assert offline_model.tool_calls_emitted()[tool_calls:] == [("get_weather", {"location": "Seattle"})]
    assert get_weather.invocation_count == invocations + 2  # once by the agent, once by this test


@pytest.mark.timeout(30)
@pytest.mark.expects_model_rejections
def test_plain_provider_trims_to_an_orphan_tool_result_the_model_rejects_and_ours_does_not(
    backends: Backends, offline_model: OfflineModelServer
) -> None:
    """max_messages=2 after a weather turn: the framework provider keeps [tool result, answer], which the model
    endpoint rejects on the next turn; the sample's store keeps [answer] and the next turn goes through."""

    async def go() -> None:
        assert backends.redis is not None
        async with connection(backends.redis) as client:
            ours = chat_message_store(client, max_messages=2)
            plain = RedisHistoryProvider(
                redis_client=client, application_id=f"plain-{uuid.uuid4().hex}", max_messages=2
            )
            session_id = f"orphan-{uuid.uuid4()}"
            try:
                async with open_agent(backends, ours) as agent:
                    session = agent.create_session(session_id=session_id)
                    await agent.run("What's the weather in Seattle?", session=session)
                    assert [item["role"] for item in raw(await client.lrange(ours.redis_key(session_id), 0, -1))] == [
                        "assistant"
                    ]
                    rejections = len(offline_model.rejections)
                    await agent.run("Tell me a joke.", session=session)
                    assert offline_model.rejections[rejections:] == []

                async with open_agent(backends, plain) as agent:  # type: ignore[arg-type]
                    session = agent.create_session(session_id=session_id)
                    await agent.run("What's the weather in Seattle?", session=session)
                    assert [item["role"] for item in raw(await client.lrange(plain._redis_key(session_id), 0, -1))] == [
                        "tool",
                        "assistant",
                    ]
                    with pytest.raises(ChatClientException):
                        await agent.run("Tell me a joke.", session=session)
                (rejection,) = offline_model.rejections[rejections:]
                assert "role 'tool' must be a response to a preceding message" in rejection
            finally:
                await ours.clear(session_id)
                await plain.clear(session_id)

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
        async with connection(backends.redis) as client:
            pattern = f"*|{sample.APPLICATION_ID}|*"
            before = set(await client.keys(pattern))
            try:
                with pytest.raises(ChatClientException):
                    await sample.basic_usage(backends, client)
            finally:
                for key in set(await client.keys(pattern)) - before:
                    await client.delete(key)

    asyncio.run(go())
    (rejection,) = offline_model.rejections[rejections:]
    assert "the history was sent twice" in rejection


async def in_memory_session_json(backends: Backends) -> str:
    agent = Agent(client=sample.OpenAIChatCompletionClient(**backends.model.client_kwargs()))
    try:
        session = agent.create_session()
        await agent.run("My name is Alice.", session=session)
        return json.dumps(session.to_dict())
    finally:
        await agent.client.client.close()  # type: ignore[attr-defined]


BAD_SESSIONS = {
    "corrupt JSON": ('{"type": "session", "session_id": ', "not valid JSON"),
    "not a session": ("[1, 2]", "not an agent session"),
    "state is not an object": ('{"type": "session", "session_id": "s1", "state": [1]}', "not an agent session"),
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
        run_sample(restore(), errors=(RedisStoreError,))
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: the saved session ") and expected in line


# --- the store on its own -------------------------------------------------------------------------------------------

# Path traversal, quotes, the key separator, glob characters, reserved device names, a leading dot, unicode, upper
# case, the encoding markers, 10 KB ids: a lower-case one stays verbatim, one that needs encoding is hashed.
HOSTILE_IDS = [
    "../../etc/passwd",
    'it\'s "quoted"',
    "a|b",
    "|",
    "*?[",
    "~none",
    "~redis-session-mfrgg",
    "con",
    "com1.txt",
    ".hidden",
    "ends.",
    "Straße",
    "Alice",
    "x" * 10_000,
    "x" * 9_999 + "y",
    "X" * 10_000,
]


def test_keys_are_those_of_the_framework_provider_for_ordinary_and_hostile_ids() -> None:
    """The store derives its keys itself (public attributes only): the same keys, so plain RedisHistoryProvider
    reads and writes the same lists."""
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    scopes: list[dict[str, Any]] = [
        {},
        {"tenant_id": "user-alice", "agent_id": "ava"},
        {"tenant_id": "T|x", "agent_id": "~none", "source_id": "Src|1"},
        {"tenant_id": "con", "key_prefix": "Chat:Messages", "source_id": "redis_memory"},
    ]
    checked = 0
    for scope in scopes:
        for application_id in ("thread-samples", "App|*"):
            ours = RedisChatMessageStore(client, application_id=application_id, **scope)
            plain = RedisHistoryProvider(redis_client=client, application_id=application_id, **scope)
            for session_id in ["session-1", str(uuid.uuid4()), *HOSTILE_IDS]:
                assert ours.redis_key(session_id) == plain._redis_key(session_id)
                checked += 1
    assert checked == 8 * (2 + len(HOSTILE_IDS))
    asyncio.run(client.aclose())


@pytest.mark.timeout(30)
def test_hostile_session_ids_stay_inside_their_scope(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        async with connection(redis_backend) as client:
            tenant = f"user-{uuid.uuid4().hex}"
            alice = chat_message_store(client, tenant_id=tenant)
            bob = chat_message_store(client, tenant_id=f"{tenant}-bob")
            # A tenant spelled to end where Alice's scope and half of the id "a|b" would meet, if ids were not encoded.
            forged = chat_message_store(
                client, tenant_id=f"{tenant}|{sample.APPLICATION_ID}|{sample.AGENT_ID}|redis_memory|a"
            )
            try:
                for number, session_id in enumerate(HOSTILE_IDS):
                    await alice.save_messages(session_id, [user(f"secret {number}")])
                prefix = f"chat_messages|v2|{tenant}|{sample.APPLICATION_ID}|{sample.AGENT_ID}|redis_memory|"
                keys = set(await client.keys(f"*{tenant}*"))
                assert keys == {alice.redis_key(session_id) for session_id in HOSTILE_IDS}
                assert len(keys) == len(HOSTILE_IDS)  # e.g. the two long ids that differ in their last character
                for key in keys:
                    segment = key.removeprefix(prefix)
                    assert key.startswith(prefix) and "|" not in segment and "/" not in segment
                for number, session_id in enumerate(HOSTILE_IDS):
                    assert texts(await alice.get_messages(session_id)) == [f"secret {number}"]
                    assert await bob.get_messages(session_id) == []
                    assert await forged.get_messages(session_id) == []
                assert await forged.get_messages("b") == []
                for empty in ("", None):
                    with pytest.raises(StoreInputError, match="session_id must be a non-empty string"):
                        await alice.save_messages(empty, [user("secret")])
                    with pytest.raises(StoreInputError):
                        await alice.get_messages(empty)
                assert set(await client.keys(f"*{tenant}*")) == keys
            finally:
                for session_id in HOSTILE_IDS:
                    await alice.clear(session_id)

    asyncio.run(go())


def every_content_type() -> list[Message]:
    return [
        Message("system", ["Be brief."]),
        Message("user", ['Grüße, 你好, 🙂 \u0000 and a quote "'], author_name="alice", message_id="m-1"),
        Message(
            "assistant",
            [
                Content.from_text("Let me check."),
                Content.from_function_call(call_id="call-1", name="get_weather", arguments='{"location": "Paris"}'),
            ],
            author_name="ava",
            message_id="m-2",
        ),
        Message(
            "tool",
            [
                Content.from_function_result(call_id="call-1", result="12 degrees"),
                Content.from_error(message="the second source failed", error_code="E42"),
            ],
            message_id="m-3",
        ),
        Message(
            "assistant",
            [
                Content.from_data(data=b"\x89PNG\r\n", media_type="image/png"),
                Content.from_uri(uri="https://example.com/a.png", media_type="image/png"),
                Content.from_usage(usage_details={"input_token_count": 10, "output_token_count": 3}),
            ],
            message_id="m-4",
        ),
        Message("user", ["x" * 1_000_000], message_id="m-5"),  # a 1 MB message
    ]


@pytest.mark.timeout(30)
def test_round_trip_keeps_order_roles_names_ids_every_content_type_and_a_1_mb_message(
    redis_backend: RedisBackend,
) -> None:
    async def go() -> None:
        async with connection(redis_backend) as client:
            store, session_id = chat_message_store(client), f"round-trip-{uuid.uuid4()}"
            written = every_content_type()
            try:
                await store.save_messages(session_id, written)
                again = chat_message_store(redis_backend.new_client())  # a new process's store on the same Redis
                try:
                    loaded = await again.get_messages(session_id)
                finally:
                    await again.redis.aclose()
                assert [m.to_dict() for m in loaded] == [m.to_dict() for m in written]
                assert [c.type for m in loaded for c in m.contents] == [
                    "text", "text", "text", "function_call", "function_result", "error", "data", "uri", "usage", "text"
                ]  # fmt: skip
                assert len(loaded[-1].text) == 1_000_000
            finally:
                await store.clear(session_id)

    asyncio.run(go())


@pytest.mark.timeout(30)
def test_clear_removes_exactly_its_scope_and_two_source_ids_share_one_redis(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        async with connection(redis_backend) as client:
            tenant, session_id = f"user-{uuid.uuid4().hex}", "shared-session"
            history = chat_message_store(client, tenant_id=tenant)
            audit = chat_message_store(client, tenant_id=tenant, source_id="audit")
            other_session = chat_message_store(client, tenant_id=tenant)
            plain = RedisHistoryProvider(
                redis_client=client, application_id=sample.APPLICATION_ID, agent_id=sample.AGENT_ID, tenant_id=tenant
            )
            try:
                await history.save_messages(session_id, [user("real history")])
                await audit.save_messages(session_id, [user("audit copy")])
                await other_session.save_messages("another-session", [user("another thread")])
                assert history.redis_key(session_id) != audit.redis_key(session_id)
                assert texts(await plain.get_messages(session_id)) == [
                    "real history"
                ]  # the framework's view: same data
                await audit.clear(session_id)
                assert await audit.get_messages(session_id) == []
                assert texts(await history.get_messages(session_id)) == ["real history"]
                await history.clear(session_id)
                assert await history.get_messages(session_id) == []
                assert texts(await other_session.get_messages("another-session")) == ["another thread"]
            finally:
                await other_session.clear("another-session")

    asyncio.run(go())


@pytest.mark.parametrize("bad", [0, -1, 1e30, 2.0, True, "3", float("nan")])
def test_max_messages_other_than_a_positive_integer_is_refused_at_construction(bad: Any) -> None:
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    with pytest.raises(StoreInputError, match="max_messages must be a positive integer or None") as error:
        RedisChatMessageStore(client, application_id="app", max_messages=bad)
    assert isinstance(error.value, ValueError)
    asyncio.run(client.aclose())


def expected_window(history: list[Message], limit: int) -> list[Message]:
    """The newest `limit` messages, without leading tool results (their call is outside the window)."""
    window = history[-limit:]
    while window and window[0].role == "tool":
        window = window[1:]
    return window


@pytest.mark.timeout(60)
def test_window_keeps_the_newest_messages_and_never_starts_with_a_tool_result(redis_backend: RedisBackend) -> None:
    """Every limit from 1 to past the history, on turns with a tool call, with parallel results stored as separate
    messages (more of them than the store reads at once), and with a cut falling inside the messages being saved."""
    parallel = [
        user("question with ten parallel calls"),
        Message(
            "assistant", [Content.from_function_call(call_id=f"p{n}", name="f", arguments="{}") for n in range(10)]
        ),
        *(Message("tool", [Content.from_function_result(call_id=f"p{n}", result=n)]) for n in range(10)),
        assistant("answer with ten results"),
    ]
    history = [*tool_turn(1), user("hi"), assistant("hello"), *parallel, *tool_turn(2)]

    async def go() -> None:
        async with connection(redis_backend) as client:
            for limit in range(1, len(history) + 2):
                store, session_id = chat_message_store(client, max_messages=limit), f"window-{uuid.uuid4()}"
                unbounded = chat_message_store(client)
                try:
                    await unbounded.save_messages(session_id, history[:-6])  # already stored
                    await store.save_messages(session_id, history[-6:])  # this save's cut
                    kept = await store.get_messages(session_id)
                    assert [m.to_dict() for m in kept] == [m.to_dict() for m in expected_window(history, limit)]
                    assert len(kept) <= limit and (not kept or kept[0].role != "tool")
                finally:
                    await store.clear(session_id)
            for limit in (1, 2):  # a window of 1 or 2 after a whole tool turn saved at once
                store, session_id = chat_message_store(client, max_messages=limit), f"window-{uuid.uuid4()}"
                await store.save_messages(session_id, tool_turn(3))
                assert texts(await store.get_messages(session_id)) == ["answer 3"]
                await store.clear(session_id)

    asyncio.run(go())


def test_a_tool_call_stays_with_its_result_while_both_fit(redis_backend: RedisBackend) -> None:
    async def go() -> None:
        async with connection(redis_backend) as client:
            store, session_id = chat_message_store(client, max_messages=3), f"pair-{uuid.uuid4()}"
            await store.save_messages(session_id, tool_turn(1))
            kept = await store.get_messages(session_id)
            await store.clear(session_id)
            assert [m.role for m in kept] == ["assistant", "tool", "assistant"]
            (call,), (result,) = kept[0].contents, kept[1].contents
            assert (call.type, result.type, result.call_id) == ("function_call", "function_result", call.call_id)

    asyncio.run(go())


def random_save(rng: random.Random, history: list[Message]) -> list[Message]:
    """A save as the framework might issue it: new messages, a retried batch, a replayed transcript plus new ones,
    identical turns without ids (which de-duplication must keep), messages with ids."""

    def fresh() -> Message:
        role, text = rng.choice(["user", "assistant"]), rng.choice(["hello", "hi", "ok"])
        return Message(role, [text], message_id=rng.choice([None, None, f"id-{rng.randrange(4)}"]))

    new = [fresh() for _ in range(rng.randint(1, 3))]
    kind = rng.randrange(4)
    if kind == 1 and history:
        return history[-rng.randint(1, min(4, len(history))) :]  # a retried save
    if kind == 2 and history:
        return [*history[-rng.randint(1, min(6, len(history))) :], *new]  # a replayed tail plus new messages
    return new


@pytest.mark.timeout(60)
def test_save_stores_exactly_what_the_framework_provider_stores(redis_backend: RedisBackend) -> None:
    """The store reads only the newest len(messages) stored messages to de-duplicate; the framework provider reads
    them all. The same saves leave the same list, for scripted and 200 random saves."""
    scripted = [
        [user("hello"), assistant("hi")],
        [user("hello"), assistant("hi")],  # an identical turn without ids
        [user("hello"), assistant("hi")],
        [user("hello")],  # a repeated input without an id is kept
        [user("hello")],
        [assistant("hi", "a-1")],
        [assistant("hi", "a-1")],  # a retried save with an id
        [user("hello"), assistant("hi"), user("hello"), assistant("hi"), user("new")],  # a replayed transcript
        *([user(f"turn {n}"), assistant(f"reply {n}")] for n in range(30)),  # a history longer than any save
        [assistant("reply 29"), user("after"), assistant("done")],
    ]
    rng = random.Random(20261127)

    async def go() -> None:
        async with connection(redis_backend) as client:
            ours = chat_message_store(client)
            plain = RedisHistoryProvider(redis_client=client, application_id=f"plain-{uuid.uuid4().hex}")
            session_id = f"same-{uuid.uuid4()}"
            try:
                for batch in scripted:
                    await ours.save_messages(session_id, batch)
                    await plain.save_messages(session_id, batch)
                    assert await client.lrange(ours.redis_key(session_id), 0, -1) == await client.lrange(
                        plain._redis_key(session_id), 0, -1
                    )
                assert await ours.message_count(session_id) > 60
                for _ in range(200):
                    newest = ours.parse(session_id, await client.lrange(ours.redis_key(session_id), -6, -1))
                    batch = random_save(rng, newest)
                    await ours.save_messages(session_id, batch)
                    await plain.save_messages(session_id, batch)
                ours_list = await client.lrange(ours.redis_key(session_id), 0, -1)
                assert ours_list == await client.lrange(plain._redis_key(session_id), 0, -1)
                assert len(ours_list) > 200
            finally:
                await ours.clear(session_id)
                await plain.clear(session_id)

    asyncio.run(go())


@pytest.mark.timeout(30)
def test_save_reads_only_the_tail_and_a_corrupt_record_is_an_error_naming_the_session(
    redis_backend: RedisBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt first record and one from a newer schema: a save still works (it reads only the newest records; the
    framework provider's save re-reads them all and fails), a load is one clear error naming the session that still
    carries the good records, other sessions are untouched, and a window that trims the bad records away heals it."""
    session_id, neighbour = f"corrupt-{uuid.uuid4()}", f"neighbour-{uuid.uuid4()}"
    newer_schema = {"type": "message", "role": "user", "contents": [], "from_a_newer_schema": 2}

    async def corrupt_then_save() -> CorruptHistoryError:
        async with connection(redis_backend) as client:
            store = chat_message_store(client)
            plain = RedisHistoryProvider(redis_client=client, application_id=sample.APPLICATION_ID, agent_id="ava")
            await store.save_messages(neighbour, [user("untouched")])
            await store.save_messages(session_id, [user("one"), assistant("two")])
            await client.lpush(store.redis_key(session_id), json.dumps(newer_schema), "{not json")
            await store.save_messages(session_id, [user("three")])
            with pytest.raises(json.JSONDecodeError):
                await plain.save_messages(session_id, [assistant("four")])
            assert texts(await store.get_messages(neighbour)) == ["untouched"]
            with pytest.raises(CorruptHistoryError) as error:
                await store.get_messages(session_id)
            return error.value

    async def load() -> None:
        async with connection(redis_backend) as client:
            await chat_message_store(client).get_messages(session_id)

    async def heal() -> list[str]:
        async with connection(redis_backend) as client:
            await chat_message_store(client, max_messages=4).save_messages(session_id, [assistant("four")])
            return texts(await chat_message_store(client).get_messages(session_id))

    async def clear() -> None:
        async with connection(redis_backend) as client:
            for store_session in (session_id, neighbour):
                await chat_message_store(client).clear(store_session)

    try:
        error = asyncio.run(corrupt_then_save())
        assert session_id in str(error) and str(error).startswith("2 unreadable record(s) in the Redis history of")
        assert isinstance(error, RuntimeError) and texts(error.readable) == ["one", "two", "three"]
        with pytest.raises(SystemExit) as exit_info:
            run_sample(load(), errors=(RedisStoreError,))
        assert exit_info.value.code == 1
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: 2 unreadable record(s) in the Redis history of session '{session_id}' (#0: ")
        assert asyncio.run(heal()) == ["one", "two", "three", "four"]
    finally:
        asyncio.run(clear())


@pytest.mark.timeout(60)
def test_two_writers_at_once_lose_nothing_and_each_save_stays_contiguous(redis_backend: RedisBackend) -> None:
    """Two app instances (own connections) append to one session at the same time; then both retry the same save
    at once, which a check-then-append without WATCH would store twice."""
    rounds = 40

    async def writer(name: str, store: RedisChatMessageStore, session_id: str) -> None:
        for number in range(rounds):
            batch = [user(f"{name}-{number}-{part}", f"{name}-{number}-{part}") for part in range(3)]
            await store.save_messages(session_id, batch)

    async def go() -> None:
        async with connection(redis_backend) as first, connection(redis_backend) as second:
            stores = chat_message_store(first), chat_message_store(second)
            session_id = f"concurrent-{uuid.uuid4()}"
            try:
                await asyncio.gather(writer("a", stores[0], session_id), writer("b", stores[1], session_id))
                ids = [m.message_id for m in await stores[0].get_messages(session_id)]
                assert sorted(ids) == sorted(f"{w}-{n}-{p}" for w in "ab" for n in range(rounds) for p in range(3))
                saves = [ids[i : i + 3] for i in range(0, len(ids), 3)]
                assert all(save == [save[0][:-1] + str(part) for part in range(3)] for save in saves)  # contiguous
                interleaved = sum(first[0] != second[0] for first, second in itertools.pairwise(saves))

                for number in range(20):
                    retried = [user(f"retry {number}", f"r-{number}"), assistant("ok", f"r-{number}-reply")]
                    await asyncio.gather(*(store.save_messages(session_id, retried) for store in stores))
                ids = [m.message_id for m in await stores[0].get_messages(session_id)]
                assert ids[3 * 2 * rounds :] == [i for n in range(20) for i in (f"r-{n}", f"r-{n}-reply")]
                assert interleaved > 0, "the writers never ran at the same time: the test proved nothing"
            finally:
                await stores[0].clear(session_id)

    asyncio.run(go())


STANDALONE_BODY = """
import asyncio
import fakeredis
import redis.asyncio as redis
from agent_framework import Content, Message
from copied import CorruptHistoryError, RedisChatMessageStore, StoreInputError

async def round_trip(client):
    try:
        store = RedisChatMessageStore(client, application_id="copied-app", tenant_id="user|1", max_messages=3)
        call = Content.from_function_call(call_id="c1", name="get_weather", arguments="{}")
        turn = [Message("user", ["Weather?"]), Message("assistant", [call]),
                Message("tool", [Content.from_function_result(call_id="c1", result="rain")]),
                Message("assistant", ["Rain."], message_id="a1")]
        await store.save_messages("s|1", turn)
        await store.save_messages("s|1", turn[-1:])  # a retried save: stored once
        loaded = await store.get_messages("s|1")
        assert [m.role for m in loaded] == ["assistant", "tool", "assistant"], loaded
        assert loaded[0].contents[0].call_id == "c1" and loaded[-1].text == "Rain."
        await client.rpush(store.redis_key("s|1"), "{broken")
        try:
            await store.get_messages("s|1")
            raise AssertionError("a corrupt record was read silently")
        except CorruptHistoryError as error:
            assert "s|1" in str(error) and len(error.readable) == 3
        await store.clear("s|1")
        assert await store.get_messages("s|1") == []
        for bad in (0, -1, 1e30):
            try:
                RedisChatMessageStore(client, application_id="copied-app", max_messages=bad)
                raise AssertionError(f"max_messages={bad} was accepted")
            except StoreInputError:
                pass
    finally:
        await client.aclose()

asyncio.run(round_trip(fakeredis.FakeAsyncRedis(decode_responses=True)))
asyncio.run(round_trip(redis.from_url(REDIS_URL, decode_responses=True)))
print("copied store: round trip on fakeredis and redis-server")
"""


@pytest.mark.timeout(120)
def test_store_class_works_copied_alone_on_fakeredis_and_redis_server(tmp_path: Path, redis_server_url: str) -> None:
    names = ["RedisStoreError", "StoreInputError", "CorruptHistoryError", "_RESERVED_NAMES", "key_segment"]
    body = f"REDIS_URL = {redis_server_url!r}\n" + STANDALONE_BODY
    process = run_standalone(tmp_path, SCRIPT, [*names, "RedisChatMessageStore"], body)
    assert "copied store: round trip on fakeredis and redis-server" in process.stdout


# --- the script as a user runs it -------------------------------------------------------------------------------------


def test_unreachable_redis_is_one_line_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"  # nothing listens there
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(SystemExit) as exit_info:
        run_sample(main(), errors=(RedisStoreError,))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: cannot reach Redis at REDIS_URL={url} (")
    assert captured.out == ""  # stopped before the first example


def test_help_prints_usage_and_runs_nothing_and_unknown_flags_are_refused(run_script_here: ScriptRunner) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_loopback_port()}/0"}  # were anything run, it would fail here
    result = run_script_here(SCRIPT, "--help", env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: redis_chat_message_store_thread.py [-h]")
    assert "RedisChatMessageStore" in result.stdout and "Backends:" not in result.stdout

    result = run_script_here(SCRIPT, "--max-messages", "3", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert "unrecognized arguments: --max-messages 3" in result.stderr


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would_without_leaking_a_connection(run_script: ScriptRunner) -> None:
    """`python -X dev -W error::ResourceWarning`: an unclosed chat client or Redis connection would be reported."""
    result = run_script(SCRIPT, env={"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error::ResourceWarning"})

    assert result.returncode == 0, result.stderr
    # Dev mode's asyncio debug may report a slow step ("Executing <Task ...> took 0.15 seconds"); nothing else.
    assert [line for line in result.stderr.splitlines() if not line.startswith("Executing <")] == []
    lines = result.stdout.splitlines()
    assert all(part in lines[0] for part in expected_banner(redis=True))
    for expected in (
        "Agent: Your name is Alice.",
        "Agent: I don't know your name yet - you haven't told me in this conversation.",
        "Agent: You live in Paris.",
        "Agent: Your favorite color is blue.",
        "Agent: I don't know your favorite color - you haven't told me in this conversation.",
        "Messages in Redis: 5",
        "Cleared 7 threads; messages left in them: 0",
    ):
        assert expected in lines
