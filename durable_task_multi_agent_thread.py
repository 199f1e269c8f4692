"""Two agents with different toolsets take turns on one thread whose history a Durable Task orchestration keeps.

A Researcher (weather, local time) and a Planner (arithmetic, currency) share one store (the activity store of
durable_task_activity_chat_message_store.py) and one session id, so each loads what the other wrote; each is
offered only its own tools. When both run at once nothing is lost: a turn (user message, tool calls, answer) is one
write and the orchestration applies writes one at a time, in arrival order, so each turn stays contiguous; neither
sees the other's concurrent turn, every later turn sees both. The scheduler's records say who wrote what.

Run it: python durable_task_multi_agent_thread.py [--role all|worker|client] [--timeout SECONDS]
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

from durable_chat_history import ChatHistoryError, HistoryTimeout
from durable_task_activity_chat_message_store import ChatRecord, DurableTaskActivityChatMessageStore
from sample_support import ModelBackend, SchedulerBackend, run_sample
from sample_support.durable_worker import add_role_arguments, run_store_sample, waiting_notice

RESEARCHER, PLANNER = "Researcher", "Planner"


def new_team(chat_client: OpenAIChatCompletionClient, store: DurableTaskActivityChatMessageStore) -> Team:
    """Both agents load from and save to `store` (one store object: its reads wait for its own writes)."""
    loaded = LoadedHistory()
    jobs = {
        RESEARCHER: "a research assistant who looks up weather and local time.",
        PLANNER: "a planning assistant who does arithmetic and currency conversion.",
    }
    agents = {
        name: Agent(
            client=chat_client,  # Chat Completions: the thread's history is ours to send
            instructions=f"You are {name}, {job} Answer briefly; use your tools for live data.",
            name=name,
            tools=TOOLS[name],
            context_providers=[store, loaded],
        )
        for name, job in jobs.items()
    }
    return Team(store, loaded, agents)


class LoadedHistory(ContextProvider):
    """Listed after the store, so it sees how many messages each run started from; it adds nothing to the context.

    With `barrier` set, each run waits there until every agent has loaded the thread: "at once" made certain.
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


async def main(role: str = "all", timeout: float = 30.0) -> dict[str, Any]:
    """The conversation below, returning what it saw; `--role` says where it and the store's worker run."""
    seen: dict[str, Any] = {"answers": []}

    async def conversation(scheduler: SchedulerBackend, model: ModelBackend) -> None:
        thread_id = f"team-{uuid.uuid4().hex[:8]}"
        chat_client, client = OpenAIChatCompletionClient(**model.client_kwargs()), scheduler.client()
        store = DurableTaskActivityChatMessageStore(client, read_timeout=timeout, on_waiting=waiting_notice(SCRIPT))
        team = new_team(chat_client, store)
        try:
            print(f"\n== 1. Two agents, one thread ({store.instance_id(thread_id)}) ==")
            for name, agent_tools in TOOLS.items():
                print(f"{name}: tools {', '.join(each.name for each in agent_tools)}")

            print("\n== 2. Taking turns: each agent sees the other's messages and calls only its own tools ==")
            for name, text in TAKING_TURNS:
                seen["answers"].append(await ask(team, thread_id, name, text))

            print("\n== 3. Two agents at once: both turns are stored whole, in the order they reached the scheduler ==")
            seen["before"] = len(await store.get_records(thread_id))
            questions = {RESEARCHER: "What time is it in Tokyo?", PLANNER: "Convert 100 USD to EUR."}
            answers = await ask_together(team, thread_id, questions)
            seen["together"] = dict(team.loaded.started_from)
            records = await store.get_records(thread_id)
            print(f"The thread held {seen['before']} messages before and holds {len(records)} now, in this order:")
            for turn in turns(records[seen["before"] :]):
                print(f"    {describe_turn(turn)}")
            print("Neither agent saw the other's concurrent turn; the next turn, by either agent, sees both:")
            seen["answers"] += [*answers.values(), await ask(team, thread_id, RESEARCHER, "Tell me a joke.")]

            print(f"\n== 4. Who wrote what: the thread as the scheduler holds it ({store.instance_id(thread_id)}) ==")
            seen["records"], seen["status"] = await store.get_records(thread_id), await store.read_status(thread_id)
            print_thread(seen["records"], seen["status"] or {})
        finally:
            client.terminate_orchestration(store.instance_id(thread_id), recursive=False)  # leave a shared hub tidy
            client.close()
            await chat_client.client.close()
        print(f"\nEnded the demo's thread orchestration ({thread_id}).")

    register = DurableTaskActivityChatMessageStore.register
    await run_store_sample(role, register=register, demo=conversation, script=SCRIPT, timeout_errors=(HistoryTimeout,))
    return seen


TAKING_TURNS = [
    (RESEARCHER, "My name is Alice."),
    (RESEARCHER, "What's the weather in Seattle?"),
    (RESEARCHER, "What is 12 * 7?"),
    (PLANNER, "What is 12 * 7?"),
    (PLANNER, "What's the weather in Paris?"),
    (PLANNER, "What is my name?"),
]


async def ask(team: Team, thread: str, name: str, text: str) -> str:
    """One turn: `name` answers `text` on the shared thread; prints the turn as the scheduler stored it."""
    print(f"User (to {name}): {text}")
    response = await team.agents[name].run(text, session=AgentSession(session_id=thread))
    records = await team.store.get_records(thread)  # waits until this turn's write is in the scheduler's state
    print(f"Agent ({name}): {response.text}")
    print(
        f"    [started from {team.loaded.started_from[name]} stored messages; scheduler: "
        f"{describe_turn(turns(records)[-1])}; the thread holds {len(records)}]"
    )
    return response.text


async def ask_together(team: Team, thread_id: str, questions: dict[str, str]) -> dict[str, str]:
    """One turn per agent at the same time; each loads the thread before any of them calls the model."""
    team.loaded.barrier = Rendezvous(len(questions))
    try:
        runs = (
            team.agents[name].run(text, session=AgentSession(session_id=thread_id)) for name, text in questions.items()
        )
        answers = {name: response.text for name, response in zip(questions, await asyncio.gather(*runs), strict=True)}
    finally:
        team.loaded.barrier = None
    for name, text in questions.items():
        print(f"User (to {name}): {text}\nAgent ({name}): {answers[name]}")
        print(f"    [{name} started from {team.loaded.started_from[name]} stored messages]")
    return answers


class Rendezvous:
    """A one-round `asyncio.Barrier` (which Python 3.10 lacks): `wait()` returns once `parties` callers arrived."""

    def __init__(self, parties: int) -> None:
        self.parties, self.arrived, self.everyone = parties, 0, asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.everyone.set()
        await self.everyone.wait()


def turns(records: list[ChatRecord]) -> list[list[ChatRecord]]:
    """The records grouped by the write (one agent turn) that stored them, in the orchestration's order."""
    return [list(group) for _, group in itertools.groupby(records, key=lambda record: record.metadata["write_id"])]


def author_of(turn: list[ChatRecord]) -> str:
    return next((r.metadata["author"] for r in turn if r.metadata["role"] != "user"), turn[0].metadata["author"])


def tool_calls(records: list[ChatRecord]) -> list[str]:
    """Every function call in `records`, as `name(arguments)`."""
    contents = (content for record in records for content in record.message.contents)
    return [f"{content.name}({content.arguments})" for content in contents if content.type == "function_call"]


def describe_turn(turn: list[ChatRecord]) -> str:
    first, last = turn[0].metadata["sequence"], turn[-1].metadata["sequence"]
    return f"seq {first}-{last} by {author_of(turn)}, tool calls: {', '.join(tool_calls(turn)) or 'none'}"


def print_thread(records: list[ChatRecord], status: dict[str, Any]) -> None:
    print(f"{'seq':>3}  {'write':<8} {'author':<10} {'role':<9} text")
    for record in records:
        meta, text = record.metadata, record.message.text or " ".join(tool_calls([record])) or "[tool result]"
        print(f"{meta['sequence']:>3}  {meta['write_id'][:8]:<8} {meta['author']:<10} {meta['role']:<9} {text}")
    print("Tool calls by author (from the stored function calls):")
    for author in (RESEARCHER, PLANNER):
        calls = tool_calls([record for record in records if record.metadata["author"] == author])
        print(f"    {author}: {', '.join(calls) or 'none'}")
    workers = ", ".join(sorted({record.metadata["worker_id"] for record in records}))
    print(f"Stored through the enrich activity on worker(s): {workers}")
    print(f"Messages by author: {status['stats']['by_author']}; writes={status['writes']}")


# The tools: the Researcher's and the Planner's.
@tool(approval_mode="never_require")
def get_weather(location: Annotated[str, "The city to get the weather for"]) -> str:
    """Get the current weather for a city."""
    return f"sunny, 18 degrees Celsius (sample data for {location})"


UTC_OFFSETS = {"tokyo": 9, "singapore": 8, "dubai": 4, "reykjavik": 0}  # cities without daylight saving time


@tool(approval_mode="never_require")
def get_time(location: Annotated[str, "The city to get the local time for"]) -> str:
    """Get the current local time in a city."""
    if (offset := UTC_OFFSETS.get(location.strip().lower())) is None:
        return f"unknown: I only know the time zones of {', '.join(city.title() for city in UTC_OFFSETS)}"
    return f"{datetime.now(timezone(timedelta(hours=offset))):%H:%M} (UTC{offset:+d})"


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


TOOLS: dict[str, list[FunctionTool]] = {RESEARCHER: [get_weather, get_time], PLANNER: [calculate, convert_currency]}
SCRIPT = "durable_task_multi_agent_thread.py"


if __name__ == "__main__":
    arguments = add_role_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    run_sample(main(arguments.role, timeout=arguments.timeout), errors=(ChatHistoryError,))
