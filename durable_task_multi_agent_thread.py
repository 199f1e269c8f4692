"""Two agents with different toolsets take turns on one thread whose history a Durable Task orchestration keeps.

A Researcher (tools: `get_weather`, `get_time`) and a Planner (tools: `calculate`, `convert_currency`) share one
thread: both agents use the same `DurableTaskActivityChatMessageStore` (see
durable_task_activity_chat_message_store.py) and the same session id, so each loads everything the other wrote.
(One store object matters: its reads wait until every write it sent is in the scheduler's state, so an agent
always sees the other's finished turn. A store in another process reads whatever the scheduler holds right then.)
Each agent is offered only its own tools, so a question that needs the other agent's tool gets "I have no tool
for that" and runs nothing. At the end the script reads back, from the scheduler's state alone, who wrote which
message and which tools each agent called (the activity store records the author of every message).

Two agents writing at once. A history provider loads the thread before the model call and saves the turn (the
user message and every reply, tool call and tool result) after it, as one write. When two agents run at the same
time on the same thread:
- nothing is lost: a write appends to the thread, it never replaces it, and the orchestration applies one write at
  a time, in the order the writes reach it;
- each turn stays in one piece: its messages get consecutive sequence numbers, the user message first, the answer
  last; the two turns are never interleaved;
- neither agent sees the other's concurrent turn: each answered from the thread as it was when it started. Every
  later turn, by either agent, sees both.
Section 3 makes the overlap certain with a barrier (both agents load the thread before either calls the model)
and prints what each agent started from and the order the orchestration stored the two turns in.

Run it:
    python durable_task_multi_agent_thread.py                 # scheduler, worker and demo here
    python durable_task_multi_agent_thread.py --role worker   # the store's worker, until Ctrl+C / SIGTERM
    python durable_task_multi_agent_thread.py --role client   # the agents, on DTS_ENDPOINT

Prerequisites: none. With nothing configured it uses a deterministic offline model served on a loopback port
and an embedded Durable Task scheduler (real gRPC). Against real services set, in the environment or `.env`:
    OPENAI_API_KEY + OPENAI_MODEL (optional OPENAI_BASE_URL), or
    AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_MODEL (+ AZURE_OPENAI_API_KEY, or an `az login`);
    DTS_ENDPOINT + DTS_TASKHUB: the Durable Task Scheduler emulator (http://localhost:8080, task hub `default`)
    or Azure (https://..., authenticated with `az login` / a managed identity).
Redis (REDIS_URL) is not used here.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import itertools
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from agent_framework import Agent, AgentSession, ContextProvider, FunctionTool, SessionContext, SupportsAgentRun, tool
from agent_framework.openai import OpenAIChatCompletionClient

from durable_task_activity_chat_message_store import ChatRecord, DurableTaskActivityChatMessageStore
from durable_task_chat_message_store import message_text
from sample_support import ModelBackend, SchedulerBackend, run_sample
from sample_support.durable_worker import run_store_sample

RESEARCHER, PLANNER = "Researcher", "Planner"

# region The tools: the Researcher's and the Planner's


@tool(approval_mode="never_require")
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a city."""
    return f"sunny, 18 degrees Celsius (sample data for {location})"


UTC_OFFSETS = {"tokyo": 9, "singapore": 8, "dubai": 4, "reykjavik": 0}  # cities without daylight saving time


@tool(approval_mode="never_require")
def get_time(location: Annotated[str, "The city to get the local time for"]) -> str:
    """Get the current local time in a city."""
    offset = UTC_OFFSETS.get(location.strip().lower())
    if offset is None:
        return f"unknown: I only know the time zones of {', '.join(city.title() for city in UTC_OFFSETS)}"
    now = datetime.now(timezone(timedelta(hours=offset)))
    return f"{now:%H:%M} (UTC{offset:+d})"


ARITHMETIC: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate(node: ast.AST) -> float:
    """+, -, * and / on numbers; nothing else (never `eval` what a model wrote)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](evaluate(node.left), evaluate(node.right))
    raise ValueError("only numbers with + - * / and parentheses")


@tool(approval_mode="never_require")
def calculate(expression: Annotated[str, "An arithmetic expression, e.g. 12 * 7"]) -> str:
    """Calculate the value of an arithmetic expression."""
    try:
        return f"{evaluate(ast.parse(expression, mode='eval').body):g}"
    except (SyntaxError, ValueError, ZeroDivisionError) as error:
        return f"cannot calculate {expression!r}: {error}"


USD_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0}  # sample rates, not live ones


@tool(approval_mode="never_require")
def convert_currency(
    amount: Annotated[float, "The amount to convert"],
    from_currency: Annotated[str, "The currency code to convert from, e.g. USD"],
    to_currency: Annotated[str, "The currency code to convert to, e.g. EUR"],
) -> str:
    """Convert an amount from one currency to another."""
    source, target = from_currency.upper(), to_currency.upper()
    if source not in USD_RATES or target not in USD_RATES:
        return f"unknown currency: I know {', '.join(USD_RATES)}"
    rate = USD_RATES[target] / USD_RATES[source]
    return f"{amount * rate:,.2f} {target} (sample rate {rate:.4g} {target} per {source})"


# endregion

# region The team: two agents on one store

ROLES: dict[str, tuple[str, list[FunctionTool]]] = {
    RESEARCHER: (
        "You are Researcher, a research assistant who looks up weather and local time.",
        [get_weather, get_time],
    ),
    PLANNER: (
        "You are Planner, a planning assistant who does arithmetic and currency conversion.",
        [calculate, convert_currency],
    ),
}


class Rendezvous:
    """A one-round `asyncio.Barrier` (which Python 3.10 lacks): `wait()` returns once `parties` callers arrived."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.everyone = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.everyone.set()
        await self.everyone.wait()


class LoadedHistory(ContextProvider):
    """Listed after the store, so it sees what the store loaded: how many messages each agent's run started from.

    With `barrier` set, it also holds every run there until all of them have loaded the thread, which turns "two
    agents at once" from likely into certain for the demo. It adds nothing to the model's context.
    """

    def __init__(self) -> None:
        super().__init__("loaded_history")
        self.started_from: dict[str, int] = {}
        self.barrier: Rendezvous | None = None

    async def before_run(
        self, *, agent: SupportsAgentRun, session: AgentSession, context: SessionContext, state: dict[str, Any]
    ) -> None:
        self.started_from[agent.name or "agent"] = len(context.get_messages())
        if self.barrier is not None:
            await self.barrier.wait()


@dataclass
class Team:
    store: DurableTaskActivityChatMessageStore
    loaded: LoadedHistory
    agents: dict[str, Agent]


def new_team(model: ModelBackend, store: DurableTaskActivityChatMessageStore) -> Team:
    """Both agents load from and save to `store`; each is offered only its own tools."""
    loaded = LoadedHistory()
    agents = {
        name: Agent(
            # Chat Completions: the thread's history is ours to send, so the service must not keep its own.
            client=OpenAIChatCompletionClient(**model.client_kwargs()),
            instructions=f"{instructions} Answer briefly; use your tools for live data.",
            name=name,
            tools=tools,
            context_providers=[store, loaded],
        )
        for name, (instructions, tools) in ROLES.items()
    }
    return Team(store, loaded, agents)


# endregion

# region Reading the thread back from the scheduler


def turns(records: list[ChatRecord]) -> list[list[ChatRecord]]:
    """The records grouped by the write (one agent turn) that stored them, in the orchestration's order."""
    return [list(group) for _, group in itertools.groupby(records, key=lambda record: record.metadata["write_id"])]


def author_of(turn: list[ChatRecord]) -> str:
    return next((r.metadata["author"] for r in turn if r.metadata["role"] != "user"), turn[0].metadata["author"])


def tool_calls(records: list[ChatRecord]) -> list[str]:
    """Every function call in `records`, as `name(arguments)`."""
    return [
        f"{content.name}({content.arguments})"
        for record in records
        for content in record.message.contents
        if content.type == "function_call"
    ]


def describe_turn(turn: list[ChatRecord]) -> str:
    first, last = turn[0].metadata["sequence"], turn[-1].metadata["sequence"]
    calls = ", ".join(tool_calls(turn)) or "none"
    return f"seq {first}-{last} by {author_of(turn)}, tool calls: {calls}"


# endregion

# region The demo


async def ask(team: Team, thread_id: str, name: str, text: str) -> str:
    """One turn: `name` answers `text` on the shared thread; prints the turn as the scheduler stored it."""
    print(f"User (to {name}): {text}")
    response = await team.agents[name].run(text, session=AgentSession(session_id=thread_id))
    print(f"Agent ({name}): {response.text}")
    records = await team.store.get_records(thread_id)  # waits until this turn's write is in the scheduler's state
    print(
        f"    [started from {team.loaded.started_from[name]} stored messages; scheduler: "
        f"{describe_turn(turns(records)[-1])}; the thread holds {len(records)}]"
    )
    return response.text


async def ask_together(team: Team, thread_id: str, questions: dict[str, str]) -> dict[str, str]:
    """Run one turn per agent at the same time; each loads the thread before any of them calls the model."""
    team.loaded.barrier = Rendezvous(len(questions))
    try:
        responses = await asyncio.gather(
            *(
                team.agents[name].run(text, session=AgentSession(session_id=thread_id))
                for name, text in questions.items()
            )
        )
    finally:
        team.loaded.barrier = None
    return {name: response.text for name, response in zip(questions, responses, strict=True)}


def print_thread(records: list[ChatRecord], status: dict[str, Any]) -> None:
    print(f"{'seq':>3}  {'write':<8} {'author':<10} {'role':<9} text")
    for record in records:
        meta = record.metadata
        text = message_text(record.message.to_dict())
        print(f"{meta['sequence']:>3}  {meta['write_id'][:8]:<8} {meta['author']:<10} {meta['role']:<9} {text[:70]}")
    print("Tool calls by author (from the stored function calls):")
    for author in (RESEARCHER, PLANNER):
        calls = tool_calls([record for record in records if record.metadata["author"] == author])
        print(f"    {author}: {', '.join(calls) or 'none'}")
    workers = sorted({record.metadata["worker_id"] for record in records})
    print(f"Stored through the enrich activity on worker(s): {', '.join(workers)}")
    stats = status["stats"]
    print(f"Messages by author: {stats['by_author']}; writes={status['writes']} generation={status['generation']}")


async def demo(scheduler: SchedulerBackend, model: ModelBackend) -> None:
    thread_id = f"team-{uuid.uuid4().hex[:8]}"
    client = scheduler.client()
    team = new_team(model, DurableTaskActivityChatMessageStore(client))
    try:
        print(f"\n== 1. Two agents, one thread ({team.store.instance_id(thread_id)}) ==")
        for name, (_, tools) in ROLES.items():
            print(f"{name}: tools {', '.join(tool.name for tool in tools)}")

        print("\n== 2. Taking turns: each agent sees the other's messages and calls only its own tools ==")
        await ask(team, thread_id, RESEARCHER, "My name is Alice.")
        await ask(team, thread_id, RESEARCHER, "What's the weather in Seattle?")
        await ask(team, thread_id, RESEARCHER, "What is 12 * 7?")
        await ask(team, thread_id, PLANNER, "What is 12 * 7?")
        await ask(team, thread_id, PLANNER, "What's the weather in Paris?")
        await ask(team, thread_id, PLANNER, "What is my name?")

        print("\n== 3. Two agents at once: both turns are stored whole, in the order they reached the orchestration ==")
        before = len(await team.store.get_records(thread_id))
        questions = {RESEARCHER: "What time is it in Tokyo?", PLANNER: "Convert 100 USD to EUR."}
        answers = await ask_together(team, thread_id, questions)
        for name, text in questions.items():
            print(f"User (to {name}): {text}")
            print(f"Agent ({name}): {answers[name]}")
            print(f"    [{name} started from {team.loaded.started_from[name]} stored messages]")
        records = await team.store.get_records(thread_id)
        print(f"The thread held {before} messages before and holds {len(records)} now. Stored in this order:")
        for turn in turns(records[before:]):
            print(f"    {describe_turn(turn)}")
        print("Neither agent saw the other's concurrent turn; the next turn, by either agent, sees both:")
        await ask(team, thread_id, RESEARCHER, "Tell me a joke.")

        print(f"\n== 4. Who wrote what: the thread as the scheduler holds it ({team.store.instance_id(thread_id)}) ==")
        status = await team.store.read_status(thread_id)
        assert status is not None
        print_thread(await team.store.get_records(thread_id), status)
    finally:
        team.store.end_history(thread_id)  # a real thread lives on; the demo leaves a shared task hub tidy
        client.close()
    print(f"\nEnded the demo's thread orchestration ({thread_id}).")


async def main(role: str = "all") -> None:
    # The store's worker never calls the model: only the process running the agents needs one.
    await run_store_sample(role, register=DurableTaskActivityChatMessageStore.register, demo=demo)


# endregion


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["all", "worker", "client"], default="all")
    arguments = parser.parse_args()
    run_sample(main(arguments.role))
