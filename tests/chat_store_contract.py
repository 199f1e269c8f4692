"""The chat message store contract: the rules every chat message store in this collection meets, as a pytest suite
you can point at your own store.

Check your own store: describe it with a `StoreFactory` (how to open it on one storage, what it supports), and the
one line `factories = [MyStoreFactory]` runs every rule on it:

    from tests.chat_store_contract import ChatStoreContract, StoreFactory

    class MyStoreFactory(StoreFactory):
        name = "MyStore"
        window_argument = "max_messages"   # declare only what your store has (see StoreFactory)
        has_clear = True

        def open(self, **options):         # each call: a new instance on the same storage (a "restart")
            return MyStore(self.tmp_path / "history.db", **options)

    class TestMyStore(ChatStoreContract):
        factories = [MyStoreFactory]

Put that in `tests/test_my_store.py` and run `.venv/bin/python -m pytest tests/test_my_store.py` (the agent-turn
rules use the offline model fixtures of `tests/conftest.py`, and every test fails if the strict offline endpoint
answered a 400). One test per rule; `RULES` lists them. A rule about a feature the store does not declare (no
`clear`, no window, no scopes) is skipped as not applicable. A rule the store cannot meet by design goes in
`expected_failures` ({test name: the reason}) and runs as `xfail(strict=True)`, so a fix turns it red.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, ClassVar

import pytest
from agent_framework import Agent, AgentSession, Content, HistoryProvider, Message, tool
from agent_framework.openai import OpenAIChatCompletionClient

from sample_support.offline_model import OFFLINE_MODEL_NAME

ONE_MB = 1024 * 1024

# The rules, in the order the matrix shows them: test name -> what it checks.
RULES: dict[str, str] = {
    "test_round_trip_keeps_every_content_type": "round trip: order, roles, authors, ids, every content type",
    "test_round_trip_keeps_unicode_and_a_1_mb_message": "round trip: unicode, 1 MB (or a refusal naming the budget)",
    "test_agent_turns_store_exactly_their_messages": "agent turns (tool calls, streamed) stored exactly once",
    "test_restored_session_continues_a_tool_conversation": "restored session continues a tool conversation",
    "test_two_sessions_are_isolated": "isolation: two sessions",
    "test_scopes_keep_users_apart": "isolation: users / applications",
    "test_two_source_ids_on_one_storage_are_isolated": "isolation: two source_ids on one storage",
    "test_hostile_session_ids_stay_in_their_own_scope": "isolation: hostile session ids",
    "test_empty_session_id_is_refused": "empty session id refused",
    "test_clear_removes_exactly_its_own_scope": "clear removes exactly its scope",
    "test_windows_of_one_and_two_messages": "window of 1 and 2 messages",
    "test_invalid_window_is_refused_at_construction": "window 0 / negative / 1e30 / True refused",
    "test_window_never_starts_with_an_orphan_tool_result": "window never starts with an orphan tool result",
    "test_concurrent_writers_lose_nothing": "two concurrent writers: nothing lost, saves contiguous",
    "test_corrupt_record_is_a_clear_error_naming_the_session": "corrupt record: clear error naming the session",
    "test_newer_schema_record_is_a_clear_error_naming_the_session": "newer schema: clear error naming the session",
}


class StoreFactory:
    """How the contract opens and inspects one store. Subclass it: set `name`, implement `open`, declare the rest.

    An instance lives for one test; `self.request` is that test's pytest request (for fixtures such as `tmp_path`,
    a server URL or a scheduler), and `self.uid` is unique to it (use it to keep shared servers' data apart).
    """

    name: ClassVar[str] = "store"
    # False: the history lives in the session object itself (InMemoryHistoryProvider), so no id is needed to find it.
    keyed_by_session_id: ClassVar[bool] = True
    # Constructor keyword arguments that scope the storage (e.g. tenant_id, user_id, application_id).
    scope_arguments: ClassVar[Sequence[str]] = ()
    has_clear: ClassVar[bool] = False  # `await store.clear(session_id)` removes a session's history
    window_argument: ClassVar[str | None] = None  # the constructor argument of a window counted in messages
    budget_argument: ClassVar[str | None] = None  # the constructor argument of a budget counted in bytes
    byte_budget: ClassVar[int | None] = None  # the documented budget a store opened without one applies
    budgets_for_the_orphan_rule: ClassVar[Sequence[int]] = ()  # small byte budgets that make the store trim
    writes_raw_records: ClassVar[bool] = False  # implements `write_raw_record` (the bad-stored-data rules)
    errors: ClassVar[tuple[type[BaseException], ...]] = (ValueError,)  # what the store raises for a clear refusal
    # Test name -> why the store cannot meet that rule, or (why, the exception that failure raises): the test runs as
    # xfail(strict=True), so it turns red when the store starts to meet the rule, or fails in another way.
    expected_failures: ClassVar[Mapping[str, str | tuple[str, type[BaseException]]]] = {}

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.uid = uuid.uuid4().hex[:10]

    @property
    def tmp_path(self) -> Any:
        return self.request.getfixturevalue("tmp_path")

    def open(self, **options: Any) -> HistoryProvider:
        """A new store instance on this factory's storage. `options` are constructor keyword arguments the contract
        varies: `source_id`, the window / budget argument, the scope arguments."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what `open` created (connections, clients); called at the end of every test, in its event loop."""

    async def write_raw_record(self, store: HistoryProvider, session_id: str, record: str) -> bool:
        """Append `record` (text, as the store would hold one serialized message) to the session's stored history,
        the way something other than this store could: a bug, an old or a newer version of the app. Return True if
        it is stored now, False if the store refused it on the way in (a refusal must not cost the good records)."""
        raise NotImplementedError

    async def write_corrupt_records(self, store: HistoryProvider, session_id: str) -> bool:
        """Records that are no messages: cut-off JSON, and JSON that is not a message."""
        stored = await self.write_raw_record(store, session_id, '{"type": "message", "role": "user", "contents": [')
        return await self.write_raw_record(store, session_id, '{"role": 5, "contents": "not a list"}') or stored

    async def write_newer_schema_record(self, store: HistoryProvider, session_id: str) -> bool:
        """A record as a newer version of the store would write it. By default: a message with a field this version
        does not know. Override it if your store versions its records some other way."""
        record = {**Message("user", ["from the future"], message_id="future").to_dict(), "schema_version": 99}
        return await self.write_raw_record(store, session_id, json.dumps(record))


def _not_applicable(factory: type[StoreFactory], test: str) -> str | None:
    """Why `test` does not apply to the store `factory` describes, or None if it does."""
    if test == "test_scopes_keep_users_apart" and not factory.scope_arguments:
        return "the store has no user or application scope"
    if test == "test_clear_removes_exactly_its_own_scope" and not factory.has_clear:
        return "the store has no clear()"
    if test == "test_empty_session_id_is_refused" and not factory.keyed_by_session_id:
        return "the history lives in the session object: no id is used to find it"
    if test == "test_windows_of_one_and_two_messages" and factory.window_argument is None:
        return "the store has no message window"
    if test == "test_invalid_window_is_refused_at_construction" and not (
        factory.window_argument or factory.budget_argument
    ):
        return "the store has no window or budget"
    if test == "test_window_never_starts_with_an_orphan_tool_result" and not (
        factory.window_argument or factory.budgets_for_the_orphan_rule
    ):
        return "the store has no window or budget"
    if "record" in test and not factory.writes_raw_records:
        return "the factory cannot write a raw record into the store's storage"
    return None


# region Messages and sessions


def state(store: HistoryProvider, session: AgentSession) -> dict[str, Any]:
    """The provider's slice of the session state, as the agent passes it."""
    return session.state.setdefault(store.source_id, {})


async def save(store: HistoryProvider, session: AgentSession, messages: Sequence[Message]) -> None:
    await store.save_messages(session.session_id, messages, state=state(store, session))


async def load(store: HistoryProvider, session: AgentSession) -> list[Message]:
    return await store.get_messages(session.session_id, state=state(store, session))


async def settled(store: HistoryProvider, session: AgentSession) -> None:
    """Let the writer read once before another instance reads: a store may confirm its own writes on its next read
    (read-your-writes, as the Durable Task stores do), and another instance only sees confirmed writes."""
    await load(store, session)


def restored(session: AgentSession) -> AgentSession:
    """The session as another process gets it back: `to_dict` -> JSON -> `from_dict`."""
    return AgentSession.from_dict(json.loads(json.dumps(session.to_dict())))


def dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [message.to_dict() for message in messages]


def text(role: str, words: str, message_id: str) -> Message:
    return Message(role, [words], message_id=message_id)


def tool_exchange(tag: str) -> list[Message]:
    """A user question, the assistant's tool call, the tool result and the answer."""
    call_id = f"call_{tag}"
    return [
        text("user", f"What's the weather in Paris? ({tag})", f"{tag}-question"),
        Message(
            "assistant",
            [Content.from_function_call(call_id=call_id, name="get_weather", arguments='{"location": "Paris"}')],
            message_id=f"{tag}-call",
        ),
        Message("tool", [Content.from_function_result(call_id=call_id, result="sunny")], message_id=f"{tag}-result"),
        text("assistant", f"It is sunny in Paris. ({tag})", f"{tag}-answer"),
    ]


def every_content_type(tag: str) -> list[Message]:
    call_id = f"call_{tag}"
    return [
        Message(
            "user",
            ["Wie ist das Wetter in Zürich? 天気 🌦️ \u202eRTL\u202c \x00 «quotes» 'single' \"double\""],
            author_name="Zoë",
            message_id=f"{tag}-user",
        ),
        Message(
            "assistant",
            [Content.from_function_call(call_id=call_id, name="get_weather", arguments='{"location": "Zürich"}')],
            author_name="assistant",
            message_id=f"{tag}-call",
        ),
        Message("tool", [Content.from_function_result(call_id=call_id, result="sunny, 18 °C")], message_id=f"{tag}-r"),
        Message(
            "assistant",
            [
                Content.from_text("Sunny, but:"),
                Content.from_error(message="quota exceeded", error_code="429", error_details="retry later"),
                Content.from_usage({"input_token_count": 12, "output_token_count": 3, "total_token_count": 15}),
            ],
            author_name="assistant",
            message_id=f"{tag}-mixed",
        ),
        Message(
            "user",
            [
                Content.from_data(b"\x89PNG\r\n\x1a\n\x00", "image/png"),
                Content.from_uri("https://example.com/cat.png?size=1&q=%C3%BC", media_type="image/png"),
                "and this picture",
            ],
            author_name="Zoë",
            message_id=f"{tag}-media",
            additional_properties={"trace": "kept"},
        ),
    ]


def hostile_session_ids(uid: str, victim: str) -> list[str]:
    """Ids that try to reach `victim` (or everything): path traversal, SQL and key quoting, Redis key separators,
    glob patterns, and a 10 KB id. `uid` keeps them apart from other tests' on shared storage."""
    return [
        f"{uid}x/../{victim}",
        f"../../{uid}",
        f"{uid}\\..\\{victim}",
        f"{uid}'; DELETE FROM chat_messages; --",
        f'{uid}" OR "1"="1',
        f"{uid}|{victim}",
        f"{uid}:{victim}",
        f"{uid}/{victim}",
        f"{uid}*",
        f"{uid}?ictim",
        f"{uid}[v]ictim",
        f"{uid}%",
        f"{uid}{'x' * 10_000}",
    ]


def starts_with_orphan_tool_result(messages: Sequence[Message]) -> bool:
    """True if a tool result answers a call that is not in the messages before it (or a person's approval answers a
    request that is not)."""
    asked: set[str | None] = set()
    for content in (content for message in messages for content in message.contents):
        if content.type == "function_call":
            asked.add(content.call_id)
        elif content.type == "function_approval_request":
            asked.add(content.id)
        answers = {"function_result": content.call_id, "function_approval_response": content.id}
        if content.type in answers and answers[content.type] not in asked:
            return True
    return False


def signature(message: Message) -> tuple[Any, ...]:
    """What a stored agent message must keep: role, and per content its type, text, call id, name, arguments."""
    return (
        message.role,
        tuple((c.type, c.text, c.call_id, c.name, c.arguments, c.result) for c in message.contents),
    )


@tool
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a location."""
    return f"The weather in {location} is sunny, 18 degrees Celsius."


@asynccontextmanager
async def new_agent(base_url: str, store: HistoryProvider) -> AsyncIterator[Agent]:
    """An agent on the offline model with `store` as its history; its chat client is closed on exit (`async with
    agent` does not close it: measured, the socket to the model stays open)."""
    client = OpenAIChatCompletionClient(model=OFFLINE_MODEL_NAME, api_key="offline", base_url=base_url)
    try:
        yield Agent(
            client=client,
            name="assistant",
            instructions="You are a friendly assistant. Answer briefly.",
            tools=[get_weather],
            context_providers=[store],
        )
    finally:
        await client.client.close()


async def turn(agent: Agent, session: AgentSession, words: str, *, stream: bool = False) -> list[Message]:
    """One agent turn; returns the messages it should have stored: the user's, then the response's."""
    if stream:
        updates = agent.run(words, session=session, stream=True)
        async for _ in updates:
            pass
        response = await updates.get_final_response()
    else:
        response = await agent.run(words, session=session)
    return [Message("user", [words]), *response.messages]


# endregion


class ChatStoreContract:
    """The rules as tests, each run once per factory in `factories` (set it in a subclass)."""

    factories: ClassVar[Sequence[type[StoreFactory]]] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "store" not in metafunc.fixturenames:
            return
        test = metafunc.function.__name__
        params = []
        for factory in self.factories:
            marks: list[pytest.MarkDecorator] = []
            if reason := _not_applicable(factory, test):
                marks.append(pytest.mark.skip(reason=f"not applicable: {reason}"))
            elif expected := factory.expected_failures.get(test):
                reason, raises = (expected, None) if isinstance(expected, str) else expected
                marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=raises))
            params.append(pytest.param(factory, id=factory.name, marks=marks))
        metafunc.parametrize("store", params, indirect=True)

    @pytest.fixture
    def store(self, request: pytest.FixtureRequest) -> StoreFactory:
        return request.param(request)

    @staticmethod
    def run(factory: StoreFactory, body: Callable[[StoreFactory], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await body(factory)
            finally:
                await factory.aclose()

        asyncio.run(main())

    def ids(self, factory: StoreFactory, *names: str) -> list[str]:
        return [f"{factory.uid}-{name}" for name in names]

    # --- round trip ---

    def test_round_trip_keeps_every_content_type(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            first = factory.open()
            session = AgentSession(session_id=self.ids(factory, "round-trip")[0])
            messages = every_content_type("rt")
            await save(first, session, messages[:3])
            await save(first, session, messages[3:])
            assert dicts(await load(first, session)) == dicts(messages)
            # A restart: a new instance on the same storage reads the session restored from its JSON.
            assert dicts(await load(factory.open(), restored(session))) == dicts(messages)

        self.run(store, body)

    def test_round_trip_keeps_unicode_and_a_1_mb_message(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            first = factory.open()
            session = AgentSession(session_id=self.ids(factory, "big")[0])
            line = "Grüße aus Zürich, 東京 と 🌍 - “quoted” 'text' \\ back\\slash\n"
            big = Message("user", [line * (ONE_MB // len(line.encode()) + 1)], message_id="big")
            assert len(json.dumps(big.to_dict(), ensure_ascii=False).encode()) > ONE_MB
            budget = factory.byte_budget
            if budget is not None and budget < ONE_MB:
                with pytest.raises(factory.errors) as refused:
                    await save(first, session, [big])
                assert f"{budget:,}" in str(refused.value) or str(budget) in str(refused.value), (
                    f"the refusal does not name the budget of {budget:,} bytes: {refused.value}"
                )
                await save(first, session, [text("user", "after the refusal", "small")])
                assert [m.message_id for m in await load(first, session)] == ["small"]
                return
            await save(first, session, [big])
            assert dicts(await load(first, session)) == dicts([big])
            assert dicts(await load(factory.open(), restored(session))) == dicts([big])

        self.run(store, body)

    # --- through a real agent ---

    def test_agent_turns_store_exactly_their_messages(self, store: StoreFactory, offline_model: Any) -> None:
        async def body(factory: StoreFactory) -> None:
            instance = factory.open()
            async with new_agent(offline_model.base_url, instance) as agent:
                session = agent.create_session(session_id=self.ids(factory, "agent")[0])
                expected = await turn(agent, session, "My name is Alice.")
                expected += await turn(agent, session, "What's the weather in Paris?")
                expected += await turn(agent, session, "What's the weather in Lisbon?", stream=True)
            stored = await load(instance, session)
            assert [m.role for m in stored] == [m.role for m in expected]
            assert [signature(m) for m in stored] == [signature(m) for m in expected]
            assert sum(c.type == "function_result" for m in stored for c in m.contents) == 2

        self.run(store, body)

    def test_restored_session_continues_a_tool_conversation(self, store: StoreFactory, offline_model: Any) -> None:
        async def body(factory: StoreFactory) -> None:
            first = factory.open()
            async with new_agent(offline_model.base_url, first) as agent:
                session = agent.create_session(session_id=self.ids(factory, "restore")[0])
                await turn(agent, session, "My name is Alice.")
                await turn(agent, session, "What's the weather in Paris?")
            await settled(first, session)
            second = factory.open()
            again = restored(session)
            history = await load(second, again)
            calls = [c.call_id for m in history for c in m.contents if c.type == "function_call"]
            results = [c.call_id for m in history for c in m.contents if c.type == "function_result"]
            assert len(calls) == 1
            assert calls == results
            async with new_agent(offline_model.base_url, second) as agent:
                await turn(agent, again, "What's the weather in London?")
                (*_, reply) = await turn(agent, again, "What is my name?")
            assert "Alice" in reply.text  # the history before the restart reached the model
            # The strict endpoint accepted every request (the autouse `no_model_rejections` fixture checks it).

        self.run(store, body)

    # --- isolation ---

    def test_two_sessions_are_isolated(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            instance = factory.open()
            one, two = (AgentSession(session_id=sid) for sid in self.ids(factory, "one", "two"))
            await save(instance, one, [text("user", "one", "m1")])
            await save(instance, two, [text("user", "two", "m2")])
            await settled(instance, one)
            await settled(instance, two)
            reader = factory.open()
            assert [m.text for m in await load(reader, restored(one))] == ["one"], "session one"
            assert [m.text for m in await load(reader, restored(two))] == ["two"], "session two"
            assert await load(reader, AgentSession(session_id=self.ids(factory, "three")[0])) == [], "a new session"

        self.run(store, body)

    def test_scopes_keep_users_apart(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            (session_id,) = self.ids(factory, "shared-id")
            for argument in factory.scope_arguments:
                alice = factory.open(**{argument: f"alice-{factory.uid}"})
                bob = factory.open(**{argument: f"bob-{factory.uid}"})
                alice_session, bob_session = AgentSession(session_id=session_id), AgentSession(session_id=session_id)
                await save(alice, alice_session, [text("user", "alice", f"{argument}-a")])
                await settled(alice, alice_session)
                assert await load(bob, bob_session) == [], f"{argument} does not keep users apart"
                await save(bob, bob_session, [text("user", "bob", f"{argument}-b")])
                await settled(bob, bob_session)
                again = factory.open(**{argument: f"alice-{factory.uid}"})
                assert [m.text for m in await load(again, restored(alice_session))] == ["alice"], argument

        self.run(store, body)

    def test_two_source_ids_on_one_storage_are_isolated(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            history, audit = factory.open(source_id="history"), factory.open(source_id="audit")
            session = AgentSession(session_id=self.ids(factory, "two-sources")[0])
            await save(history, session, [text("user", "history", "h1")])
            await save(audit, session, [text("user", "audit", "a1")])
            await settled(history, session)
            await settled(audit, session)
            again = restored(session)
            seen = [m.text for m in await load(factory.open(source_id="history"), again)]
            assert seen == ["history"], f"source_id 'history' reads {seen}"
            seen = [m.text for m in await load(factory.open(source_id="audit"), again)]
            assert seen == ["audit"], f"source_id 'audit' reads {seen}"
            if factory.has_clear:
                await audit.clear(session.session_id)  # type: ignore[attr-defined]
                assert [m.text for m in await load(history, again)] == ["history"], "clear() of 'audit' reached it"

        self.run(store, body)

    def test_hostile_session_ids_stay_in_their_own_scope(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            victim = f"{factory.uid}victim"
            hostile = hostile_session_ids(factory.uid, victim)
            instance = factory.open()
            victim_session = AgentSession(session_id=victim)
            await save(instance, victim_session, [text("user", "victim", "victim")])
            sessions = [AgentSession(session_id=session_id) for session_id in hostile]

            async def attempt(number: int, session: AgentSession) -> bool:
                try:
                    await save(instance, session, [text("user", str(number), str(number))])
                except factory.errors:
                    return False  # a clear refusal is fine: the id reached nothing
                await settled(instance, session)
                return True

            saved = await asyncio.gather(*(attempt(number, session) for number, session in enumerate(sessions)))
            stored = {s.session_id: (s, str(n)) for n, (s, ok) in enumerate(zip(sessions, saved, strict=True)) if ok}
            reader = factory.open()
            for session_id, (session, expected) in stored.items():
                assert [m.text for m in await load(reader, restored(session))] == [expected], (
                    f"session id {session_id[:40]!r} did not read back its own history"
                )
            assert [m.text for m in await load(reader, restored(victim_session))] == ["victim"]
            if factory.has_clear:
                for session_id in stored:
                    await reader.clear(session_id)  # type: ignore[attr-defined]
                assert [m.text for m in await load(reader, restored(victim_session))] == ["victim"]

        self.run(store, body)

    def test_empty_session_id_is_refused(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            instance = factory.open()
            for session_id in ("", None):
                with pytest.raises(factory.errors):
                    await instance.save_messages(session_id, [text("user", "lost?", "m")], state={})
                with pytest.raises(factory.errors):
                    await instance.get_messages(session_id, state={})

        self.run(store, body)

    def test_clear_removes_exactly_its_own_scope(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            instance = factory.open()
            one, two = (AgentSession(session_id=sid) for sid in self.ids(factory, "clear-one", "clear-two"))
            await save(instance, one, [text("user", "one", "m1")])
            await save(instance, two, [text("user", "two", "m2")])
            others = []
            for argument in factory.scope_arguments:
                other = factory.open(**{argument: f"other-{factory.uid}"})
                await save(other, one, [text("user", argument, argument)])
                others.append((other, argument))
            await instance.clear(one.session_id)  # type: ignore[attr-defined]
            await settled(instance, two)
            reader = factory.open()
            assert await load(reader, restored(one)) == []
            assert [m.text for m in await load(reader, restored(two))] == ["two"]
            for other, argument in others:
                assert [m.text for m in await load(other, restored(one))] == [argument]

        self.run(store, body)

    # --- windows ---

    def test_windows_of_one_and_two_messages(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            argument = factory.window_argument
            assert argument is not None
            for size, expected in ((1, ["a3"]), (2, ["u3", "a3"])):
                instance = factory.open(**{argument: size})
                session = AgentSession(session_id=self.ids(factory, f"window-{size}")[0])
                await save(instance, session, [text("user", "one", "u1"), text("assistant", "one", "a1")])
                await save(instance, session, tool_exchange("t"))
                await save(instance, session, [text("user", "three", "u3"), text("assistant", "three", "a3")])
                assert [m.message_id for m in await load(instance, session)] == expected
                again = factory.open(**{argument: size})
                assert [m.message_id for m in await load(again, restored(session))] == expected

        self.run(store, body)

    def test_invalid_window_is_refused_at_construction(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            for argument in (factory.window_argument, factory.budget_argument):
                if argument is None:
                    continue
                for value in (0, -1, 1e30, True):
                    with pytest.raises(ValueError):  # a bad setting: ValueError (or the store's subclass of it)
                        factory.open(**{argument: value})
                        raise AssertionError(f"{argument}={value!r} was accepted")

        self.run(store, body)

    def test_window_never_starts_with_an_orphan_tool_result(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            windows = [(factory.window_argument, size) for size in range(1, 7)] if factory.window_argument else []
            windows += [(factory.budget_argument, size) for size in factory.budgets_for_the_orphan_rule]
            for argument, size in windows:
                assert argument is not None
                instance = factory.open(**{argument: size})
                session = AgentSession(session_id=self.ids(factory, f"orphan-{size}")[0])
                written = [text("user", "one", "u1"), text("assistant", "one", "a1"), *tool_exchange("t")]
                # An agent talking to its tools: a call and its result with no user message in between.
                written += tool_exchange("t2")[1:]
                for message in written:  # one write each, so a trim can fall between a call and its result
                    await save(instance, session, [message])
                loaded = await load(instance, session)
                assert loaded, f"{argument}={size} returned nothing"
                assert dicts(loaded) == dicts(written[-len(loaded) :]), f"{argument}={size}: not the newest messages"
                assert not starts_with_orphan_tool_result(loaded), (
                    f"{argument}={size} starts with {[m.role for m in loaded]}"
                )

        self.run(store, body)

    # --- concurrency ---

    def test_concurrent_writers_lose_nothing(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            writers = [factory.open(), factory.open()]
            (session_id,) = self.ids(factory, "concurrent")
            shared = AgentSession(session_id=session_id)
            # Two app instances: each has its own copy of the session (for a store that keeps the history in the
            # session object, both work on the one session).
            sessions = [shared, AgentSession(session_id=session_id) if factory.keyed_by_session_id else shared]
            saves = {
                (w, k): [text("user", f"writer {w} save {k} message {i}", f"w{w}-s{k}-m{i}") for i in range(3)]
                for w in range(2)
                for k in range(5)
            }

            async def write(w: int) -> None:
                for k in range(5):
                    await save(writers[w], sessions[w], saves[w, k])

            await asyncio.gather(write(0), write(1))
            await load(writers[0], sessions[0])  # each writer confirms its own writes (read-your-writes stores)
            ids = [m.message_id for m in await load(writers[1], sessions[1])]
            expected = [m.message_id for batch in saves.values() for m in batch]
            assert sorted(ids) == sorted(expected), "messages were lost or saved twice"
            for batch in saves.values():
                start = ids.index(batch[0].message_id)
                assert ids[start : start + 3] == [m.message_id for m in batch], "a save was interleaved"

        self.run(store, body)

    # --- bad stored data ---

    def test_corrupt_record_is_a_clear_error_naming_the_session(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            await self._bad_record(factory, factory.write_corrupt_records)

        self.run(store, body)

    def test_newer_schema_record_is_a_clear_error_naming_the_session(self, store: StoreFactory) -> None:
        async def body(factory: StoreFactory) -> None:
            await self._bad_record(factory, factory.write_newer_schema_record)

        self.run(store, body)

    async def _bad_record(
        self, factory: StoreFactory, write_bad: Callable[[HistoryProvider, str], Awaitable[bool]]
    ) -> None:
        instance = factory.open()
        good, bad = (AgentSession(session_id=sid) for sid in self.ids(factory, "good", "bad"))
        await save(instance, good, [text("user", "good", "g1")])
        await save(instance, bad, [text("user", "before", "b1")])
        await settled(instance, good)
        await settled(instance, bad)
        stored = await write_bad(instance, bad.session_id)
        reader = factory.open()
        if stored:
            with pytest.raises(factory.errors) as error:
                await load(reader, restored(bad))
                raise AssertionError("the bad record was read without an error")
            assert bad.session_id in str(error.value), f"the error does not name the session: {error.value}"
        else:  # refused on the way in: the session's history is as it was
            assert [m.text for m in await load(reader, restored(bad))] == ["before"]
        assert [m.text for m in await load(reader, restored(good))] == ["good"], "another session became unreadable"
