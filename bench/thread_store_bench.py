"""Per-turn cost of every thread store in this collection as one conversation grows.

One session talks to the offline model for N turns (default 1,000; `--turns`; `--quick` = 100) through each store:
the framework default (`InMemoryHistoryProvider`, the baseline), the SQLite `CustomChatMessageStore`, the Redis
store on fakeredis and on a real `redis-server` (started here on a free loopback port when the binary exists), the
Durable Task chat message store and its activity variant (embedded scheduler), and the orchestrated thread (event ->
reply round trip). Each store runs unbounded and with a bounded window where it has one.

For every turn it records the whole turn (`agent.run`; for the orchestrated thread the client's round trip) and,
separately, the store's own load (`before_run`) and save (`after_run`): the stores are imported from the samples
unchanged and timed by wrapping those two methods. The table reports medians and p95 over the first and the last
`min(100, N/10)` turns and their ratio (ratios are the headline: machines are noisy), plus the messages the store
loaded at the last turn. A second table splits the orchestrated thread's round trip into the agent turn inside the
activity and the rest (scheduler and waiting), with and without continue-as-new, and shows the first turn after a
continue-as-new apart.

Everything runs offline on purpose, whatever `.env` says: 1,000-turn runs are not for a paid model or a shared
Redis / scheduler. Output: a markdown table on stdout and in `bench/results/` (`--out DIR`), a PNG plot of
milliseconds per turn (needs matplotlib: `pip install -r bench/requirements.txt`; without it the plot is skipped with
a note) and a CSV of every turn.

    python bench/thread_store_bench.py                 # full run: 1,000 turns, 300 without a window (~7 min, 2 cores)
    python bench/thread_store_bench.py --quick         # 100 turns
    python bench/thread_store_bench.py --turns 300 --only sqlite,redis-fake
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

import fakeredis  # noqa: E402
import redis.asyncio as redis  # noqa: E402
from agent_framework import Agent, HistoryProvider, InMemoryHistoryProvider, Message  # noqa: E402
from agent_framework.openai import OpenAIChatCompletionClient  # noqa: E402
from durabletask import task  # noqa: E402
from durabletask.worker import TaskHubGrpcWorker  # noqa: E402

import durable_task_orchestrated_thread as orchestrated  # noqa: E402
from custom_chat_message_store_thread import CustomChatMessageStore  # noqa: E402
from durable_task_activity_chat_message_store import DurableTaskActivityChatMessageStore  # noqa: E402
from durable_task_chat_message_store import SCHEDULER_MESSAGE_LIMIT_BYTES, DurableTaskChatMessageStore  # noqa: E402
from redis_chat_message_store_thread import RedisChatMessageStore  # noqa: E402
from sample_support import SampleError, SchedulerBackend, run_sample  # noqa: E402
from sample_support.durable_worker import wait_for_custom_status  # noqa: E402
from sample_support.model import ModelBackend  # noqa: E402
from sample_support.offline_model import OFFLINE_MODEL_NAME, offline_model_server  # noqa: E402
from sample_support.scheduler import start_embedded_scheduler  # noqa: E402
from tests.local_servers import local_redis_server  # noqa: E402
from tests.model_probe import ModelProbe  # noqa: E402

RESULTS_DIR = REPO_DIR / "bench" / "results"
FULL_TURNS = 1000
QUICK_TURNS = 100
UNBOUNDED_TURNS = 300
WINDOW_MESSAGES = 100  # the bounded window of the stores that count messages
# The Durable Task stores and the orchestrated thread bound their history in bytes, not messages: these budgets hold
# about 100 messages of this conversation (~170 bytes each as JSON).
DURABLE_WINDOW_BYTES = 17_000
ORCHESTRATED_WINDOW_BYTES = 20_000  # the session JSON also carries the store's own fields
NO_CAN_MAX_TURNS = 150  # without continue-as-new every turn's session is replayed twice: more would pass 4 MiB
NO_CAN_SESSION_BYTES = 8_000
CONVERSATION = ["My name is Alice.", "I live in Paris.", "What is my name?", "Tell me a joke.", "Where do I live?"]
PACKAGES = ["agent-framework-core", "agent-framework-openai", "agent-framework-redis", "durabletask", "redis"]
TARGET_RATIO = 1.3


# region Measuring


@dataclass
class Turn:
    """One turn's timings in milliseconds (`load`/`save` None where the store's methods were not timed)."""

    total: float
    load: float | None = None
    save: float | None = None
    loaded: int | None = None  # messages the store handed to the agent
    activity: float | None = None  # the orchestrated thread's agent turn, inside the activity


@dataclass
class Recorder:
    """Collects the store-side timings of the turn in progress (the orchestrated thread's come from a worker thread)."""

    load: float | None = None
    save: float | None = None
    loaded: int | None = None
    activity: float | None = None

    def take(self, total: float) -> Turn:
        turn = Turn(total, self.load, self.save, self.loaded, self.activity)
        self.load = self.save = self.loaded = self.activity = None
        return turn


def timed_provider(provider: HistoryProvider, recorder: Recorder) -> HistoryProvider:
    """Time `before_run` (load) and `after_run` (save) of one store instance, leaving its class untouched.

    Not `get_messages`/`save_messages`: `RedisHistoryProvider.save_messages` calls `get_messages` itself.
    """
    before_run, after_run = provider.before_run, provider.after_run

    async def timed_before_run(**kwargs: Any) -> None:
        start = time.perf_counter()
        await before_run(**kwargs)
        recorder.load = (time.perf_counter() - start) * 1000
        recorder.loaded = len(kwargs["context"].get_messages(sources={provider.source_id}))

    async def timed_after_run(**kwargs: Any) -> None:
        start = time.perf_counter()
        await after_run(**kwargs)
        recorder.save = (time.perf_counter() - start) * 1000

    provider.before_run = timed_before_run  # type: ignore[method-assign]
    provider.after_run = timed_after_run  # type: ignore[method-assign]
    return provider


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.5 = median, 0.95 = p95)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def window_size(turns: int) -> int:
    """Turns per comparison window: 100 of 1,000, a tenth of shorter runs."""
    return max(1, min(100, turns // 10))


@dataclass
class Result:
    """One store variant's run: per-turn timings, or why it did not run."""

    store: str
    variant: str
    key: str
    turns: list[Turn] = field(default_factory=list)
    skipped: str | None = None
    targets: list[str] = field(default_factory=list)  # "save" and/or "turn": which flatness target applies
    first_after_can: list[int] = field(default_factory=list)  # 0-based turns that followed a continue-as-new
    planned: int = 0  # turns to run

    def series(self, name: str, indexes: range | list[int]) -> list[float]:
        values = [getattr(self.turns[i], name) for i in indexes if i < len(self.turns)]
        return [value for value in values if value is not None]

    def windows(self) -> tuple[range, range]:
        count, size = len(self.turns), window_size(len(self.turns))
        return range(size), range(count - size, count)


# endregion

# region The conversation and the stores


async def converse(agent: Agent, recorder: Recorder, turns: int) -> list[Turn]:
    session = agent.create_session(session_id=f"bench-{uuid.uuid4().hex[:8]}")
    measured = []
    for number in range(turns):
        # A message id per turn: the framework de-duplicates id-less messages by content.
        message = Message("user", [CONVERSATION[number % len(CONVERSATION)]], message_id=f"user-{number}")
        start = time.perf_counter()
        await agent.run(message, session=session)
        measured.append(recorder.take((time.perf_counter() - start) * 1000))
    return measured


def new_agent(model: ModelBackend, store: HistoryProvider | None, recorder: Recorder) -> Agent:
    providers = [timed_provider(store, recorder)] if store else []
    client = OpenAIChatCompletionClient(**model.client_kwargs())
    return Agent(client=client, instructions="You are a friendly assistant.", name="bench", context_providers=providers)


@dataclass
class Context:
    """What the variants share: the model, the scheduler, a temp dir, the Redis server URL, and the recorder the
    orchestrated thread's activity reports to (from the worker's thread)."""

    model: ModelBackend
    scheduler: SchedulerBackend
    directory: Path
    redis_url: str | None
    activity_recorder: Recorder = field(default_factory=Recorder)


StoreFactory = Callable[[Context], Awaitable[tuple[HistoryProvider | None, Callable[[], Awaitable[None]]]]]


async def no_cleanup() -> None:
    return None


async def framework_default(_: Context) -> tuple[HistoryProvider | None, Callable[[], Awaitable[None]]]:
    return None, no_cleanup


def sqlite_store(window: int | None) -> StoreFactory:
    async def build(ctx: Context) -> tuple[HistoryProvider | None, Callable[[], Awaitable[None]]]:
        database = ctx.directory / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        return CustomChatMessageStore(database, max_messages=window), no_cleanup

    return build


def redis_store(real: bool, window: int | None) -> StoreFactory:
    async def build(ctx: Context) -> tuple[HistoryProvider | None, Callable[[], Awaitable[None]]]:
        if real:
            assert ctx.redis_url is not None
            client: redis.Redis = redis.from_url(ctx.redis_url, decode_responses=True)
        else:
            client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        store = RedisChatMessageStore(
            redis_client=client, application_id="bench", agent_id="bench", max_messages=window
        )
        return store, client.aclose

    return build


def durable_store(store_class: type[DurableTaskChatMessageStore], budget: int | None) -> StoreFactory:
    """`budget=None`: the largest history budget the store accepts at its default continue-as-new interval."""

    async def build(ctx: Context) -> tuple[HistoryProvider | None, Callable[[], Awaitable[None]]]:
        client = ctx.scheduler.client()
        store = store_class(client, writes_per_generation=4, history_budget_bytes=budget or largest_budget(store_class))

        async def cleanup() -> None:
            for instance_id in [store.instance_id(session_id) for session_id in store._unconfirmed]:
                client.terminate_orchestration(instance_id, recursive=False)
            client.close()

        return store, cleanup

    return build


def largest_budget(store_class: type[DurableTaskChatMessageStore]) -> int:
    return SCHEDULER_MESSAGE_LIMIT_BYTES // (2 + 4 * store_class.copies_per_write)


async def run_agent_variant(ctx: Context, result: Result, factory: StoreFactory) -> None:
    store, cleanup = await factory(ctx)
    recorder = Recorder()
    try:
        agent = new_agent(ctx.model, store, recorder)
        if store is None:  # the framework's own default: the first run adds an InMemoryHistoryProvider; time it
            await agent.run("Hello!", session=agent.create_session())
            timed_provider(next(p for p in agent.context_providers if isinstance(p, InMemoryHistoryProvider)), recorder)
        result.turns = await converse(agent, recorder, result.planned)
    finally:
        await cleanup()


# endregion

# region The orchestrated thread


class TimedAgentTurns(orchestrated.AgentTurns):
    """The sample's `AgentTurns`, timing each agent turn inside the activity and its history provider's load/save."""

    def __init__(self, model: ModelBackend, recorder: Recorder) -> None:
        super().__init__(model)
        self.recorder = recorder
        history = next(p for p in self.agent.context_providers if isinstance(p, InMemoryHistoryProvider))
        timed_provider(history, recorder)  # the shared agent's one provider: timed once for every turn

    def run_agent_turn(self, ctx: task.ActivityContext, turn: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        outcome = super().run_agent_turn(ctx, turn)
        self.recorder.activity = (time.perf_counter() - start) * 1000
        return outcome


def orchestrated_worker(ctx: Context, turns: orchestrated.AgentTurns) -> TaskHubGrpcWorker:
    """The sample's worker (its orchestrator, its activity on `turns`) plus both stores' orchestrators."""
    worker = orchestrated.new_worker(ctx.scheduler, turns)
    DurableTaskChatMessageStore.register(worker)
    DurableTaskActivityChatMessageStore.register(worker)
    return worker


async def run_orchestrated_variant(
    ctx: Context, result: Result, *, every: int | None, session_budget: int, max_turns: int | None
) -> None:
    """Raise each turn and wait for its reply in the custom status; `every=None`: no continue-as-new in this run."""
    turns = min(result.planned, max_turns or result.planned)
    recorder = ctx.activity_recorder
    client = ctx.scheduler.client()
    thread = orchestrated.OrchestratedThread(client, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        if every is None:
            # `OrchestratedThread.start` refuses this on purpose (a generation this long could pass 4 MiB with
            # long messages); this conversation's messages are short and NO_CAN_MAX_TURNS keeps it under.
            every = turns + 1
            initial = orchestrated.initial_state(every, session_budget)
            client.schedule_new_orchestration(
                orchestrated.thread_orchestrator, input=initial, instance_id=thread.thread_id
            )
        else:
            thread.start(every=every, session_budget=session_budget)
        await wait_for_custom_status(client, thread.thread_id, lambda status: status is not None, timeout=30)
        for number in range(turns):
            start = time.perf_counter()
            await thread.ask(CONVERSATION[number % len(CONVERSATION)])
            result.turns.append(recorder.take((time.perf_counter() - start) * 1000))
            if number > 0 and number % every == 0:
                result.first_after_can.append(number)
    finally:
        client.terminate_orchestration(thread.thread_id, recursive=False)
        client.close()


# endregion

# region The variants


@dataclass
class Variant:
    key: str
    store: str
    variant: str
    run: Callable[[Context, Result], Awaitable[None]]
    targets: list[str]
    needs_redis_server: bool = False


def agent_variant(factory: StoreFactory) -> Callable[[Context, Result], Awaitable[None]]:
    return lambda ctx, result: run_agent_variant(ctx, result, factory)


def orchestrated_variant(
    *, every: int | None, session_budget: int, max_turns: int | None = None
) -> Callable[[Context, Result], Awaitable[None]]:
    return lambda ctx, result: run_orchestrated_variant(
        ctx, result, every=every, session_budget=session_budget, max_turns=max_turns
    )


EVERY = orchestrated.TURNS_PER_GENERATION
ORCHESTRATED = "OrchestratedThread (round trip)"


def variants() -> list[Variant]:
    window = f"max_messages={WINDOW_MESSAGES}"
    durable_window = f"budget {DURABLE_WINDOW_BYTES:,} B (~{WINDOW_MESSAGES} messages)"
    orchestrated_window = f"session {ORCHESTRATED_WINDOW_BYTES:,} B (~{WINDOW_MESSAGES} messages)"
    can = f"continue-as-new every {EVERY} turns"
    sample_default = orchestrated.SESSION_BUDGET_BYTES
    return [
        Variant(
            "in-memory",
            "InMemoryHistoryProvider (framework default)",
            "unbounded",
            agent_variant(framework_default),
            [],
        ),
        Variant("sqlite", "CustomChatMessageStore (SQLite)", "unbounded", agent_variant(sqlite_store(None)), ["save"]),
        Variant(
            "sqlite-window",
            "CustomChatMessageStore (SQLite)",
            window,
            agent_variant(sqlite_store(WINDOW_MESSAGES)),
            ["save", "turn"],
        ),
        Variant(
            "redis-fake",
            "RedisChatMessageStore (fakeredis)",
            "unbounded",
            agent_variant(redis_store(False, None)),
            ["save"],
        ),
        Variant(
            "redis-fake-window",
            "RedisChatMessageStore (fakeredis)",
            window,
            agent_variant(redis_store(False, WINDOW_MESSAGES)),
            ["save", "turn"],
        ),
        Variant(
            "redis-server",
            "RedisChatMessageStore (redis-server)",
            "unbounded",
            agent_variant(redis_store(True, None)),
            ["save"],
            needs_redis_server=True,
        ),
        Variant(
            "redis-server-window",
            "RedisChatMessageStore (redis-server)",
            window,
            agent_variant(redis_store(True, WINDOW_MESSAGES)),
            ["save", "turn"],
            needs_redis_server=True,
        ),
        Variant(
            "durable",
            "DurableTaskChatMessageStore",
            f"budget {largest_budget(DurableTaskChatMessageStore):,} B (the largest allowed)",
            agent_variant(durable_store(DurableTaskChatMessageStore, None)),
            ["save"],
        ),
        Variant(
            "durable-window",
            "DurableTaskChatMessageStore",
            durable_window,
            agent_variant(durable_store(DurableTaskChatMessageStore, DURABLE_WINDOW_BYTES)),
            ["save", "turn"],
        ),
        Variant(
            "activity",
            "DurableTaskActivityChatMessageStore",
            f"budget {largest_budget(DurableTaskActivityChatMessageStore):,} B (the largest allowed)",
            agent_variant(durable_store(DurableTaskActivityChatMessageStore, None)),
            ["save"],
        ),
        Variant(
            "activity-window",
            "DurableTaskActivityChatMessageStore",
            durable_window,
            agent_variant(durable_store(DurableTaskActivityChatMessageStore, DURABLE_WINDOW_BYTES * 2)),
            ["save", "turn"],
        ),
        Variant(
            "orchestrated",
            ORCHESTRATED,
            f"session {sample_default:,} B, {can} (the sample's defaults)",
            orchestrated_variant(every=EVERY, session_budget=sample_default),
            ["save"],
        ),
        Variant(
            "orchestrated-window",
            ORCHESTRATED,
            f"{orchestrated_window}, {can}",
            orchestrated_variant(every=EVERY, session_budget=ORCHESTRATED_WINDOW_BYTES),
            ["save", "turn"],
        ),
        Variant(
            "orchestrated-no-can",
            ORCHESTRATED,
            f"session {NO_CAN_SESSION_BYTES:,} B, no continue-as-new (at most {NO_CAN_MAX_TURNS} turns)",
            orchestrated_variant(every=None, session_budget=NO_CAN_SESSION_BYTES, max_turns=NO_CAN_MAX_TURNS),
            ["save"],
        ),
    ]


ROUND_TRIP_ROWS = ["orchestrated", "orchestrated-window", "orchestrated-no-can"]


# endregion

# region Reporting


def cell(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f}" if values else "n/a"


def ratio(early: list[float], late: list[float]) -> float | None:
    if not early or not late:
        return None
    return percentile(late, 0.5) / percentile(early, 0.5)


def ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def verdicts(result: Result) -> str:
    early, late = result.windows()
    found = []
    for name in result.targets:
        series = "save" if name == "save" else "total"
        value = ratio(result.series(series, early), result.series(series, late))
        label = "save flat" if name == "save" else "turn flat"
        met = value is not None and value <= TARGET_RATIO
        found.append(f"{label}: {'met' if met else 'MISSED'}")
    return "; ".join(found) or "baseline (no target)"


def store_table(results: list[Result]) -> str:
    early_label, late_label = "first window", "last window"
    header = [
        "Store",
        "Variant",
        "Turns",
        f"Turn ms {early_label} (med / p95)",
        f"Turn ms {late_label}",
        "Turn x",
        f"Load ms {early_label}",
        f"Load ms {late_label}",
        "Load x",
        f"Save ms {early_label}",
        f"Save ms {late_label}",
        "Save x",
        "Messages loaded at last turn",
        "Targets (≤ 1.3x)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        if result.skipped:
            row = [result.store, result.variant, "0", *[f"not run: {result.skipped}"] * (len(header) - 3)]
        else:
            early, late = result.windows()
            row = [result.store, result.variant, str(len(result.turns))]
            for name in ("total", "load", "save"):
                first, last = result.series(name, early), result.series(name, late)
                row += [cell(first), cell(last), ratio_cell(ratio(first, last))]
            loaded = result.turns[-1].loaded
            row += ["n/a" if loaded is None else str(loaded), verdicts(result)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def round_trip_table(results: list[Result]) -> str:
    header = [
        "Orchestrated thread",
        "Turns",
        "Round trip ms, all turns (med / p95)",
        "Turns not after a continue-as-new",
        "First turn after a continue-as-new",
        "Agent turn in the activity",
        "Scheduler and waiting (round trip - activity)",
        "Steady turns, last / first window x",
        "Target: med < 25, p95 < 50 (all turns)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        if result.skipped or not result.turns:
            continue
        everything = result.series("total", range(len(result.turns)))
        after = set(result.first_after_can)
        steady_turns = [i for i in range(len(result.turns)) if i not in after]
        early, late = result.windows()
        steady_ratio = ratio(
            result.series("total", [i for i in early if i not in after]),
            result.series("total", [i for i in late if i not in after]),
        )
        met = percentile(everything, 0.5) < 25 and percentile(everything, 0.95) < 50
        overhead = [turn.total - turn.activity for turn in result.turns if turn.activity is not None]
        lines.append(
            "| "
            + " | ".join(
                [
                    result.variant,
                    str(len(result.turns)),
                    cell(everything),
                    cell(result.series("total", steady_turns)),
                    cell(result.series("total", sorted(after))) if after else "n/a (none in this run)",
                    cell(result.series("activity", range(len(result.turns)))),
                    cell(overhead),
                    ratio_cell(steady_ratio),
                    "met" if met else "MISSED",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{versions}"
    )


def report(results: list[Result], turns: int, seconds: float) -> str:
    round_trips = [result for key in ROUND_TRIP_ROWS for result in results if result.key == key]
    parts = [
        f"# Thread store benchmark: {turns} turns per store",
        "",
        f"Machine: {machine_description()}.  ",
        f"Model: the offline model ({OFFLINE_MODEL_NAME}) over loopback HTTP; scheduler: embedded, over gRPC. "
        f"The whole run took {seconds:.0f} s.",
        "",
        "## Per-turn cost",
        "",
        "Milliseconds, median / p95. Turn = the whole `agent.run` (for the orchestrated thread: raise the event, "
        "wait for the reply in the custom status). Load = the store's `before_run`, save = its `after_run` "
        "(for the orchestrated thread: of the in-memory history inside the activity). x = median of the "
        "last window / median of the first. The windows are the first and the last tenth of a row's turns, at "
        "most 100 (of 1,000 turns: 1-100 and 901-1000). Stores without a window run fewer turns "
        "(`--unbounded-turns`): each of their turns costs more than the last.",
        "",
        store_table(results),
        "",
    ]
    if round_trips:
        parts += ["## Orchestrated thread round trip", "", round_trip_table(round_trips), ""]
    return "\n".join(parts)


def write_csv(results: list[Result], path: Path) -> None:
    ran = [result for result in results if result.turns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["turn", *[f"{result.key} {name}" for result in ran for name in ("total", "load", "save")]])
        for index in range(max((len(result.turns) for result in ran), default=0)):
            row: list[Any] = [index + 1]
            for result in ran:
                turn = result.turns[index] if index < len(result.turns) else None
                for name in ("total", "load", "save"):
                    value = getattr(turn, name) if turn else None
                    row.append("" if value is None else f"{value:.3f}")
            writer.writerow(row)


def rolling_median(values: list[float], width: int) -> list[float]:
    return [percentile(values[max(0, i - width + 1) : i + 1], 0.5) for i in range(len(values))]


def write_plot(results: list[Result], turns: int, path: Path) -> bool:
    """Whole-turn and save milliseconds per turn, one line per store variant; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    width = max(1, window_size(turns) // 5)
    figure, (left, right) = plt.subplots(1, 2, figsize=(16, 7), sharex=True)
    colors = plt.get_cmap("tab20").colors
    for index, result in enumerate(result for result in results if result.turns):
        style = {"color": colors[index % len(colors)], "linewidth": 1.2, "label": result.key}
        if "window" in result.key or result.key.startswith("orchestrated-"):
            style["linestyle"] = "--"
        numbers = range(1, len(result.turns) + 1)
        left.plot(numbers, rolling_median([turn.total for turn in result.turns], width), **style)
        saves = [turn.save if turn.save is not None else math.nan for turn in result.turns]
        right.plot(numbers, rolling_median(saves, width) if all(map(math.isfinite, saves)) else saves, **style)
    for axes, title in ((left, "Whole turn"), (right, "Store save (after_run)")):
        axes.set_yscale("log")
        axes.set_xlabel("turn")
        axes.set_ylabel("milliseconds (log scale)")
        axes.set_title(f"{title}, rolling median of {width} turns")
        axes.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Per-turn cost of the thread stores over {turns} turns (dashed: bounded window)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# endregion


def offline_model() -> ModelBackend:
    server = offline_model_server()
    kwargs = {"model": OFFLINE_MODEL_NAME, "api_key": "offline", "base_url": server.base_url}
    return ModelBackend("offline", f"offline model at {server.base_url}", kwargs)


async def run_all(
    chosen: list[Variant], turns: int, unbounded_turns: int, redis_url: str | None, scheduler: SchedulerBackend
) -> list[Result]:
    probe = ModelProbe(offline_model_server())
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="thread-store-bench-") as directory:
        ctx = Context(offline_model(), scheduler, Path(directory), redis_url)
        agent_turns = TimedAgentTurns(ctx.model, ctx.activity_recorder)
        worker = orchestrated_worker(ctx, agent_turns)
        # Idle through the long non-durable variants, the worker's work-item stream times out and reconnects,
        # logging a warning each time: not news for a benchmark.
        logging.getLogger("durabletask.samples.worker").setLevel(logging.ERROR)
        worker.start()
        try:
            for variant in chosen:
                # A store without a window costs more every turn (see the README): fewer turns keep the run short.
                planned = turns if "turn" in variant.targets else min(turns, unbounded_turns)
                result = Result(variant.store, variant.variant, variant.key, targets=variant.targets, planned=planned)
                results.append(result)
                if variant.needs_redis_server and redis_url is None:
                    result.skipped = "redis-server is not on PATH"
                    print(f"{variant.key}: skipped ({result.skipped})", flush=True)
                    continue
                rejected_before = len(probe.rejections)
                start = time.perf_counter()
                await variant.run(ctx, result)
                if probe.rejections[rejected_before:]:
                    raise SampleError(f"{variant.key}: the offline model rejected a request")
                elapsed = time.perf_counter() - start
                print(f"{variant.key}: {len(result.turns)} turns in {elapsed:.1f} s", flush=True)
        finally:
            await asyncio.to_thread(worker.stop)  # lets a running turn finish...
            agent_turns.close()  # ... before its chat client closes
            probe.close()
    order = {variant.key: index for index, variant in enumerate(chosen)}
    return sorted(results, key=lambda result: order[result.key])


async def main(turns: int, unbounded_turns: int, only: list[str] | None, out: Path) -> None:
    known = variants()
    unknown = sorted(set(only or []) - {variant.key for variant in known})
    if unknown:
        raise SampleError(f"unknown --only key(s) {', '.join(unknown)}; known: {', '.join(v.key for v in known)}")
    chosen = [variant for variant in known if not only or variant.key in only]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SampleError(f"cannot write results to {out}: {error}") from None
    print(
        f"Benchmark: {turns} turns per store ({min(turns, unbounded_turns)} without a window), {len(chosen)} store "
        f"variants; results go to {out}",
        flush=True,
    )
    embedded = start_embedded_scheduler()
    scheduler = SchedulerBackend(f"127.0.0.1:{embedded.port}", "default", secure_channel=False, embedded=embedded)
    start = time.perf_counter()
    try:
        with local_redis_server() as redis_url:
            results = await run_all(chosen, turns, unbounded_turns, redis_url, scheduler)
    finally:
        scheduler.stop()
    text = report(results, turns, time.perf_counter() - start)
    stem = f"thread_stores_{turns}_turns"
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    write_csv(results, out / f"{stem}.csv")
    print(f"\n{text}")
    if write_plot(results, turns, out / f"{stem}.png"):
        print(f"Wrote {out / f'{stem}.md'}, {out / f'{stem}.png'} and {out / f'{stem}.csv'}.")
    else:
        print(f"Wrote {out / f'{stem}.md'} and {out / f'{stem}.csv'}.")
        print("No plot: matplotlib is not installed (pip install -r bench/requirements.txt).")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, help=f"turns per store (default {FULL_TURNS}; {QUICK_TURNS} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_TURNS}-turn smoke run")
    parser.add_argument(
        "--unbounded-turns",
        type=int,
        default=UNBOUNDED_TURNS,
        help=f"cap for the stores without a window (default {UNBOUNDED_TURNS}): their turns grow with the history",
    )
    parser.add_argument("--only", help="comma-separated variant keys (e.g. sqlite,redis-fake); default: all")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the table, plot and CSV")
    arguments = parser.parse_args()
    arguments.turns = arguments.turns or (QUICK_TURNS if arguments.quick else FULL_TURNS)
    if min(arguments.turns, arguments.unbounded_turns) < 2:
        parser.error("--turns and --unbounded-turns must be at least 2")
    return arguments


if __name__ == "__main__":
    arguments = parse_args()
    only = [key.strip() for key in arguments.only.split(",") if key.strip()] if arguments.only else None
    run_sample(main(arguments.turns, arguments.unbounded_turns, only, arguments.out))
