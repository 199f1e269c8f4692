"""The offline model: wire protocol through the real Agent Framework clients, validation, and honest answers.

Every test talks HTTP to an `OfflineModelServer` of its own module (so `rejections` here are ours), either
through `OpenAIChatCompletionClient` (Chat Completions) / `OpenAIChatClient` (Responses) or with raw urllib.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from agent_framework import Agent, InMemoryHistoryProvider, tool
from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient

from sample_support.offline_model import (
    OFFLINE_MODEL_NAME,
    OfflineModelServer,
    ToolSpec,
    Turn,
    compose_reply,
    offline_model_server,
)

CLIENTS = ["chat_completions", "responses"]
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineModelServer]:
    model_server = OfflineModelServer()
    model_server.start()
    yield model_server
    model_server.stop()


@pytest.fixture(autouse=True)
def no_earlier_rejections(server: OfflineModelServer) -> None:
    server.rejections.clear()


def make_client(kind: str, server: OfflineModelServer) -> OpenAIChatClient | OpenAIChatCompletionClient:
    settings: dict[str, Any] = {"base_url": server.base_url, "api_key": "offline", "model": OFFLINE_MODEL_NAME}
    return OpenAIChatCompletionClient(**settings) if kind == "chat_completions" else OpenAIChatClient(**settings)


def post(server: OfflineModelServer, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST a JSON body (or raw bytes) and return (status, parsed JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        server.base_url + path, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_stream(server: OfflineModelServer, path: str, body: dict[str, Any]) -> list[tuple[str | None, str]]:
    """POST a streaming request and return its SSE events as (event name, data)."""
    request = urllib.request.Request(
        server.base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        raw = response.read().decode()
    events = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


def run(scenario: Coroutine[Any, Any, T], *agents: Agent) -> T:
    """Run `scenario`, then close the agents' HTTP clients on the same event loop.

    Otherwise the SDK closes them when they are garbage collected, on whatever loop runs then.
    """

    async def main() -> T:
        try:
            return await scenario
        finally:
            for agent in agents:
                await agent.client.client.close()

    return asyncio.run(main())


async def run_turns(agent: Agent, texts: list[str], *, stream: bool = False) -> tuple[list[str], Any]:
    """Run `texts` as consecutive turns of one session; returns the answers and the session."""
    session = agent.create_session()
    answers = []
    for text in texts:
        if stream:
            response_stream = agent.run(text, session=session, stream=True)
            async for _ in response_stream:
                pass
            answers.append((await response_stream.get_final_response()).text)
        else:
            answers.append((await agent.run(text, session=session)).text)
    return answers, session


# region Memory comes only from the visible history


@pytest.mark.parametrize("kind", CLIENTS)
def test_recalls_a_fact_only_from_the_same_session(server: OfflineModelServer, kind: str) -> None:
    agent = Agent(client=make_client(kind, server))

    async def scenario() -> tuple[list[str], Any, str]:
        answers, session = await run_turns(agent, ["My name is Alice", "What is my name?"])
        fresh = await agent.run("What is my name?", session=agent.create_session())
        return answers, session, fresh.text

    (introduced, recalled), session, fresh_answer = run(scenario(), agent)

    assert introduced == "Nice to meet you, Alice!"
    assert recalled == "Your name is Alice."
    assert "Alice" not in fresh_answer
    assert "don't know your name" in fresh_answer
    if kind == "responses":
        assert session.service_session_id.startswith("resp_")  # the chain lives in the service
    assert server.rejections == []


def test_summary_describes_the_visible_history(server: OfflineModelServer) -> None:
    agent = Agent(client=make_client("responses", server))
    texts = ["I live in Lisbon", "My favorite color is green", "Please summarize our conversation"]
    answers, _ = run(run_turns(agent, texts), agent)

    assert answers[2] == (
        'So far (4 earlier messages): you told me you live in Lisbon; I replied "Good to know that you live in '
        'Lisbon."; you told me your favorite color is green; I replied "Good to know: your favorite color is green.".'
    )


# endregion

# region Tools


def weather_tools() -> tuple[list[tuple[str, str]], Any, Any]:
    """A get_weather and a get_time tool that record their calls."""
    calls: list[tuple[str, str]] = []

    @tool
    def get_weather(location: str) -> str:
        """Get the current weather for a city."""
        calls.append(("get_weather", location))
        return f"Cloudy with light rain, 11 C in {location}"

    @tool
    def get_time(timezone: str) -> str:
        """Get the current time in a time zone."""
        calls.append(("get_time", timezone))
        return "14:05"

    return calls, get_weather, get_time


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_tool_round_trip_runs_only_offered_tools(server: OfflineModelServer, kind: str, stream: bool) -> None:
    calls, get_weather, get_time = weather_tools()
    weather_agent = Agent(client=make_client(kind, server), tools=[get_weather])
    clock_agent = Agent(client=make_client(kind, server), tools=[get_time])
    emitted_before = len(server.tool_calls_emitted())

    async def scenario() -> tuple[list[str], list[str]]:
        weather = await run_turns(weather_agent, ["What's the weather like in Seattle?"], stream=stream)
        clock = await run_turns(
            clock_agent, ["What's the weather in Oslo?", "What time is it in Tokyo?"], stream=stream
        )
        return weather[0], clock[0]

    weather_answers, clock_answers = run(scenario(), weather_agent, clock_agent)

    assert calls == [("get_weather", "Seattle"), ("get_time", "Tokyo")]
    assert server.tool_calls_emitted()[emitted_before:] == [
        ("get_weather", {"location": "Seattle"}),
        ("get_time", {"timezone": "Tokyo"}),
    ]
    assert weather_answers == ["The weather in Seattle: Cloudy with light rain, 11 C in Seattle."]
    assert clock_answers[0] == "I don't have a tool to check the weather in Oslo, so I can't answer that."
    assert clock_answers[1] == "The time in Tokyo: 14:05."
    assert server.rejections == []


def test_calculator_and_currency_arguments_follow_the_schema(server: OfflineModelServer) -> None:
    received: list[Any] = []

    @tool
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        received.append(expression)
        return "84"

    @tool
    def convert_currency(amount: float, from_currency: str, to_currency: str) -> str:
        """Convert money between currencies."""
        received.append((amount, from_currency, to_currency))
        return "92.10 EUR"

    agent = Agent(client=make_client("chat_completions", server), tools=[calculate, convert_currency])
    answers, _ = run(run_turns(agent, ["What is 12 * 7?", "Convert 100 USD to EUR"]), agent)

    assert received == ["12 * 7", (100, "USD", "EUR")]
    assert answers == ["12 * 7 = 84.", "100 USD in EUR: 92.10 EUR."]


# endregion

# region Streaming


@pytest.mark.parametrize("kind", CLIENTS)
def test_streamed_text_arrives_in_pieces_that_add_up(server: OfflineModelServer, kind: str) -> None:
    agent = Agent(client=make_client(kind, server), instructions="You are Ava, a friendly travel assistant.")

    async def scenario() -> tuple[list[str], list[str], str]:
        response_stream = agent.run("Hello, who are you?", stream=True)
        deltas, repeats = [], []
        async for update in response_stream:
            for content in update.contents:
                if content.type == "text" and content.text:
                    # The Responses API ends a text with `response.output_text.done`, which repeats the whole
                    # text; the framework turns it into a "replace" content, so `update.text` repeats it too.
                    (repeats if content.merge_mode == "replace" else deltas).append(content.text)
        return deltas, repeats, (await response_stream.get_final_response()).text

    deltas, repeats, final_text = run(scenario(), agent)

    assert len(deltas) > 1
    assert "".join(deltas) == final_text
    assert repeats == ([final_text] if kind == "responses" else [])
    assert final_text.startswith("Hello! I'm Ava, a friendly travel assistant.")


def test_chat_completions_stream_is_well_formed(server: OfflineModelServer) -> None:
    body = {
        "model": OFFLINE_MODEL_NAME,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Tell me a joke"}],
    }
    events = post_stream(server, "/chat/completions", body)

    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_responses_stream_events_are_numbered_and_complete(server: OfflineModelServer) -> None:
    body = {"model": OFFLINE_MODEL_NAME, "stream": True, "input": "Hello there"}
    events = post_stream(server, "/responses", body)

    payloads = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [payload["type"] for payload in payloads]
    assert [payload["sequence_number"] for payload in payloads] == list(range(len(payloads)))
    names = [payload["type"] for payload in payloads]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    deltas = "".join(payload["delta"] for payload in payloads if payload["type"] == "response.output_text.delta")
    completed = payloads[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == deltas


# endregion

# region Validation: what the real service rejects


def test_chat_completions_rejects_a_tool_message_without_a_tool_call(server: OfflineModelServer) -> None:
    body = {
        "model": OFFLINE_MODEL_NAME,
        "messages": [
            {"role": "tool", "tool_call_id": "call_orphan", "content": "Sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
    }
    status, answer = post(server, "/chat/completions", body)

    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert "must be a response to a preceding message with 'tool_calls'" in answer["error"]["message"]
    assert "call_orphan" in answer["error"]["message"]
    assert server.rejections == [answer["error"]["message"]]


def test_chat_completions_rejects_a_tool_call_without_a_result(server: OfflineModelServer) -> None:
    call = {"id": "call_open", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    body = {
        "model": OFFLINE_MODEL_NAME,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "user", "content": "Hello?"},
        ],
    }
    status, answer = post(server, "/chat/completions", body)

    assert status == 400
    assert "did not have response messages: call_open" in answer["error"]["message"]


def test_responses_rejects_a_function_call_output_without_its_call(server: OfflineModelServer) -> None:
    body = {
        "model": OFFLINE_MODEL_NAME,
        "input": [{"type": "function_call_output", "call_id": "call_orphan", "output": "Sunny"}],
    }
    status, answer = post(server, "/responses", body)

    assert status == 400
    assert answer["error"]["message"] == "No tool call found for function call output with call_id call_orphan."


def test_responses_rejects_an_unknown_previous_response_id(server: OfflineModelServer) -> None:
    unstored_status, unstored = post(server, "/responses", {"model": OFFLINE_MODEL_NAME, "input": "Hi", "store": False})
    assert unstored_status == 200

    for response_id in ("resp_does_not_exist", unstored["id"]):
        body = {"model": OFFLINE_MODEL_NAME, "input": "Hi again", "previous_response_id": response_id}
        status, answer = post(server, "/responses", body)
        assert status == 400
        assert answer["error"]["message"] == f"Previous response with id '{response_id}' not found."
        assert answer["error"]["param"] == "previous_response_id"


def test_responses_rejects_history_replayed_on_top_of_the_chain(server: OfflineModelServer) -> None:
    status, first = post(server, "/responses", {"model": OFFLINE_MODEL_NAME, "input": "My name is Alice"})
    assert status == 200
    replay = [
        {"role": "user", "content": "My name is Alice"},
        {"role": "assistant", "content": [{"type": "output_text", "text": first["output"][0]["content"][0]["text"]}]},
        {"role": "user", "content": "What is my name?"},
    ]
    body = {"model": OFFLINE_MODEL_NAME, "input": replay, "previous_response_id": first["id"]}
    status, answer = post(server, "/responses", body)

    assert status == 400
    assert "the history was sent twice" in answer["error"]["message"]
    assert answer["error"]["code"] == "duplicate_history"


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
def test_rejects_a_missing_model_and_malformed_json(server: OfflineModelServer, path: str) -> None:
    no_model = {"messages": [{"role": "user", "content": "Hi"}]} if path == "/chat/completions" else {"input": "Hi"}
    status, answer = post(server, path, no_model)
    assert (status, answer["error"]["message"], answer["error"]["param"]) == (
        400,
        "you must provide a model parameter",
        "model",
    )

    status, answer = post(server, path, b'{"model": "offline-model", "input": ')
    assert status == 400
    assert answer["error"]["message"].startswith("We could not parse the JSON body of your request")
    assert len(server.rejections) == 2


def test_unknown_urls_get_an_openai_shaped_404(server: OfflineModelServer) -> None:
    status, answer = post(server, "/embeddings", {"model": OFFLINE_MODEL_NAME, "input": "Hi"})

    assert status == 404
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["code"] == "unknown_url"
    assert server.rejections == []


def test_stored_chain_with_local_history_provider_is_rejected_on_the_second_turn(server: OfflineModelServer) -> None:
    """The "double history" mistake: OpenAIChatClient's default store=True plus a local history provider."""
    agent = Agent(client=make_client("responses", server), context_providers=[InMemoryHistoryProvider()])

    async def scenario() -> None:
        session = agent.create_session()
        await agent.run("My name is Alice", session=session)
        await agent.run("What is my name?", session=session)

    with pytest.raises(Exception, match="the history was sent twice"):
        run(scenario(), agent)
    assert len(server.rejections) == 1


CORRECT_SETUPS: dict[str, Callable[[OfflineModelServer], Agent]] = {
    "responses-service-chain": lambda server: Agent(client=make_client("responses", server)),
    "responses-store-false-local-history": lambda server: Agent(
        client=make_client("responses", server),
        default_options={"store": False},
        context_providers=[InMemoryHistoryProvider()],
    ),
    "chat-completions-local-history": lambda server: Agent(
        client=make_client("chat_completions", server), context_providers=[InMemoryHistoryProvider()]
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("setup", CORRECT_SETUPS)
def test_correct_setups_are_accepted_and_store_repeated_turns(
    server: OfflineModelServer, setup: str, stream: bool
) -> None:
    agent = CORRECT_SETUPS[setup](server)
    turns = ["hello", "hello", "hello", "My name is Bob", "What is my name?"]
    answers, session = run(run_turns(agent, turns, stream=stream), agent)

    assert server.rejections == []
    assert answers[-1] == "Your name is Bob."
    stored = session.state.get("in_memory", {}).get("messages")
    if setup == "responses-service-chain":
        assert stored is None and session.service_session_id.startswith("resp_")
    else:
        assert [message.role for message in stored] == ["user", "assistant"] * 5


# endregion

# region The model itself


def test_introduction_uses_the_name_from_the_instructions() -> None:
    turns = [Turn("system", "You are Ava, a friendly travel assistant."), Turn("user", "Who are you?")]
    assert compose_reply(turns, []).text == (
        "Hello! I'm Ava, a friendly travel assistant. I run on a small offline model, so I only know what you "
        "tell me in this conversation."
    )
    assert "I'm an offline assistant" in compose_reply([Turn("user", "hi")], []).text


def test_facts_are_recalled_only_when_a_user_stated_them() -> None:
    told = [Turn("user", "My favourite color is teal and I live in Oslo"), Turn("assistant", "Noted.")]
    assert compose_reply([*told, Turn("user", "What is my favorite color?")], []).text == "Your favorite color is teal."
    assert compose_reply([*told, Turn("user", "Where do I live?")], []).text == "You live in Oslo."

    said_by_an_agent = [Turn("assistant", "My name is Zed"), Turn("user", "What's my name?")]
    assert compose_reply(said_by_an_agent, []).text.startswith("I don't know your name yet")
    unknown = compose_reply([Turn("user", "Do you remember my favorite food?")], []).text
    assert unknown == "I don't know your favorite food - you haven't told me in this conversation."


def test_jokes_and_fallback_depend_only_on_the_history() -> None:
    first, second = compose_reply([Turn("user", "Tell me a joke")], []), compose_reply([Turn("user", "a joke")], [])
    assert first == second
    other = compose_reply([Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "Tell me a joke")], [])
    assert other.text != first.text

    fallback = compose_reply([Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "Quantum gravity?")], [])
    assert fallback.text == (
        "You said: \"Quantum gravity?\". I'm a simple offline model, so I can't answer that properly; "
        "I can see 2 earlier messages in this conversation."
    )


def test_tool_arguments_are_filled_from_the_schema_property_names() -> None:
    city_time = ToolSpec("current_time", {"properties": {"city": {"type": "string"}}, "required": ["city"]})
    reply = compose_reply([Turn("user", "What time is it in Lima right now?")], [city_time])
    assert reply.tool_call is not None and json.loads(reply.tool_call.arguments) == {"city": "Lima"}

    forecast = ToolSpec(
        "get_weather",
        {
            "properties": {
                "place": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["place", "unit"],
        },
    )
    reply = compose_reply([Turn("user", "weather in New York today?")], [forecast])
    assert reply.tool_call is not None
    assert json.loads(reply.tool_call.arguments) == {"place": "New York", "unit": "celsius"}


def test_the_answer_after_a_tool_call_quotes_the_result() -> None:
    reply = compose_reply([Turn("user", "What's the weather in Rome?")], [ToolSpec("get_weather", {})])
    call = reply.tool_call
    assert call is not None
    turns = [
        Turn("user", "What's the weather in Rome?"),
        Turn("assistant", tool_calls=(call,)),
        Turn("tool", '"Sunny, 25 C"', tool_call_id=call.call_id),
    ]
    assert compose_reply(turns, [ToolSpec("get_weather", {})]).text == "The weather in Rome: Sunny, 25 C."


# endregion

# region Server lifecycle


def test_singleton_starts_once_and_counts_requests() -> None:
    model_server = offline_model_server()
    assert offline_model_server() is model_server
    assert model_server.base_url.startswith("http://127.0.0.1:") and model_server.base_url.endswith("/v1")

    served = model_server.requests_served
    status, _ = post(model_server, "/unknown", {})
    assert status == 404
    assert model_server.requests_served == served + 1


def test_stop_releases_the_port() -> None:
    model_server = OfflineModelServer()
    base_url = model_server.start()
    assert post(model_server, "/responses", {"model": OFFLINE_MODEL_NAME, "input": "hi"})[0] == 200
    model_server.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base_url + "/responses", data=b"{}", timeout=2)


# endregion
