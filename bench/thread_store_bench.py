"""Per-turn cost of every thread store in this collection, and what the orchestrated thread costs over the scheduler.

One run, everything offline (the offline model over loopback HTTP, fakeredis and a throwaway `redis-server`, the
embedded Durable Task scheduler over gRPC; whatever `.env` says: long runs are not for a paid model or a shared
service). The stores are imported from the samples unchanged. Sections of the report:

1. Curves: one session per store for N turns (default 1,000; 300 for stores without a window), whole turn, load
   (`before_run`) and save (`after_run`) per turn; medians of the first and last 100 turns.
2. Prefilled: each store without a window filled to ~20 and ~2,000 stored messages through its own `save_messages`,
   then the next turns' load and save timed (the "save flat" target). The framework's `RedisHistoryProvider` beside
   ours.
3. The Durable Task history's append step (the orchestrator's work per write) at 20 and 2,000 held messages.
4. The orchestrated thread: each turn by its place in a continue-as-new generation, summarisation turns apart, the
   agent turn inside the activity, and the rest (scheduler and waiting).
5. The floor: an empty orchestration round trip, and one carrying the orchestrated thread's session; the thread's
   scheduler overhead as a ratio to it.
6. Polling: the samples' backoff vs a fixed 5 ms poll on one thread (round trip, polls per turn).

Output: `bench/results/thread_stores_<N>_turns.md` (also on stdout), `.csv` (every turn of section 1) and `.png`
(needs matplotlib: `pip install -r bench/requirements.txt`; without it the plot is skipped with a note).

    python bench/thread_store_bench.py            # the full run (~8 min on 2 shared cores)
    python bench/thread_store_bench.py --quick    # 100 turns, small prefills
    python bench/thread_store_bench.py --turns 300 --only sqlite,redis-fake,prefilled
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import gc
import inspect
import json
import logging
import math
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

import fakeredis  # noqa: E402
import redis.asyncio as redis  # noqa: E402
from agent_framework import (  # noqa: E402
    Agent,
    CompactionProvider,
    HistoryProvider,
    InMemoryHistoryProvider,
    Message,
)
from agent_framework.openai import OpenAIChatCompletionClient  # noqa: E402
from agent_framework_redis import RedisHistoryProvider  # noqa: E402
from durabletask import task  # noqa: E402
from durabletask.worker import TaskHubGrpcWorker  # noqa: E402

import durable_task_chat_message_store as chat_store_module  # noqa: E402
from bench.measure import (  # noqa: E402
    cell,
    machine_description,
    median,
    percentile,
    ratio,
    ratio_cell,
    table,
    verdict,
)
from custom_chat_message_store_thread import CustomChatMessageStore  # noqa: E402
from durable_task_activity_chat_message_store import DurableTaskActivityChatMessageStore  # noqa: E402
from durable_task_chat_message_store import DurableTaskChatMessageStore  # noqa: E402
from durable_task_orchestrated_thread import OrchestratedThread  # noqa: E402
from durable_task_orchestrated_thread_roles import AgentTurns, new_worker  # noqa: E402
from redis_chat_message_store_thread import RedisChatMessageStore  # noqa: E402
from sample_support import SampleError, SchedulerBackend, run_sample  # noqa: E402
from sample_support.model import ModelBackend, offline_model  # noqa: E402
from sample_support.offline_model import OFFLINE_MODEL_NAME, offline_model_server  # noqa: E402
from sample_support.scheduler import embedded_scheduler  # noqa: E402
from tests.local_servers import local_redis_server  # noqa: E402
from tests.model_probe import ModelProbe  # noqa: E402

try:  # the history's state class may live in a module of its own
    from durable_chat_history import ChatHistory  # type: ignore[import-not-found]
except ImportError:
    ChatHistory = chat_store_module.ChatHistory

RESULTS_DIR = REPO_DIR / "bench" / "results"
FULL_TURNS = 1000
QUICK_TURNS = 100
UNBOUNDED_TURNS = 200
WINDOW_MESSAGES = 100  # the bounded window of the stores that count messages
# The Durable Task stores and the orchestrated thread bound their history in bytes; these budgets hold about 100
# messages of this conversation (the table shows how many each held at its last turn).
DURABLE_WINDOW_BYTES = 17_000
ACTIVITY_WINDOW_BYTES = 34_000  # the activity store's budget also counts a metadata record per message
ORCHESTRATED_WINDOW_BYTES = 60_000  # the session JSON also carries compaction annotations per message
PREFILL_SIZES = (20, 2000)
QUICK_PREFILL_SIZES = (20, 200)
PREFILL_TURNS = 20
FLOOR_TURNS = 100
POLLING_TURNS = 40
CONVERSATION = ["My name is Alice.", "I live in Paris.", "What is my name?", "Tell me a joke.", "Where do I live?"]
REPLIES = [
    "Nice to meet you, Alice.",
    "Paris is a lovely place to live.",
    "Your name is Alice.",
    "Why did the scarecrow win an award? He was outstanding in his field.",
    "You live in Paris.",
]
TARGET_FLAT = 1.3
TARGET_FLOOR = 1.5
_START = inspect.signature(OrchestratedThread.start).parameters
EVERY = _START["every"].default  # the sample's continue-as-new interval
SAMPLE_SESSION_BUDGET = _START["session_budget"].default
FLOOR_EVENT = "bench_floor_turn"
FLOOR_EMPTY = "empty (no activity, no session)"
FLOOR_WITH_SESSION = "with the session (a no-op activity, the session in state and input)"


# region Measuring


@dataclass
class Turn:
    """One turn's timings in milliseconds (None where not measured) and what the store held."""

    total: float
    load: float | None = None
    save: float | None = None
    loaded: int | None = None  # messages the history provider handed to the agent
    activity: float | None = None  # the orchestrated thread's agent turn, inside the activity
    compaction: float | None = None  # the orchestrated thread's CompactionProvider.after_run
    position: int | None = None  # 0-based place of the turn in its continue-as-new generation
    summarized: bool = False  # the orchestrated thread wrote a summary during this turn
    polls: int | None = None  # status reads the client made for this turn


@dataclass
class Recorder:
    """Collects the timings of the turn in progress (the orchestrated thread's come from the worker's threads)."""

    load: float | None = None
    save: float | None = None
    loaded: int | None = None
    activity: float | None = None
    compaction: float | None = None

    def take(self, total: float) -> Turn:
        turn = Turn(total, self.load, self.save, self.loaded, self.activity, self.compaction)
        self.load = self.save = self.loaded = self.activity = self.compaction = None
        return turn


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def timed_provider(provider: HistoryProvider, recorder: Recorder) -> HistoryProvider:
    """Time `before_run` (load) and `after_run` (save) of one store instance, leaving its class untouched.

    Not `get_messages`/`save_messages`: `RedisHistoryProvider.save_messages` calls `get_messages` itself.
    """
    before_run, after_run = provider.before_run, provider.after_run

    async def timed_before_run(**kwargs: Any) -> None:
        start = time.perf_counter()
        await before_run(**kwargs)
        recorder.load = elapsed_ms(start)
        recorder.loaded = len(kwargs["context"].get_messages(sources={provider.source_id}))

    async def timed_after_run(**kwargs: Any) -> None:
        start = time.perf_counter()
        await after_run(**kwargs)
        recorder.save = elapsed_ms(start)

    provider.before_run = timed_before_run  # type: ignore[method-assign]
    provider.after_run = timed_after_run  # type: ignore[method-assign]
    return provider


@contextmanager
def timed_provider_classes(recorder: Recorder) -> Iterator[None]:
    """Time every `InMemoryHistoryProvider` load/save and `CompactionProvider.after_run` while the block runs.

    The orchestrated thread builds its agent and providers inside each turn's activity, so only their classes can be
    timed; the originals are restored on exit (nothing else runs agents meanwhile)."""
    patched = [
        (InMemoryHistoryProvider, "before_run", "load"),
        (InMemoryHistoryProvider, "after_run", "save"),
        (CompactionProvider, "after_run", "compaction"),
    ]
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in patched]

    def timed(method: Callable[..., Awaitable[None]], slot: str) -> Callable[..., Awaitable[None]]:
        async def wrapper(self: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            await method(self, **kwargs)
            setattr(recorder, slot, elapsed_ms(start))
            if slot == "load":
                recorder.loaded = len(kwargs["context"].get_messages(sources={self.source_id}))

        return wrapper

    for cls, name, slot in patched:
        setattr(cls, name, timed(getattr(cls, name), slot))
    try:
        yield
    finally:
        for cls, name, original in saved:
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


def window_size(turns: int) -> int:
    """Turns per comparison window: 100 of 1,000, a tenth of shorter runs."""
    return max(1, min(100, turns // 10))


@dataclass
class Result:
    """One store variant's run: per-turn timings, or why it did not run."""

    key: str
    store: str
    variant: str
    turns: list[Turn] = field(default_factory=list)
    skipped: str | None = None
    targets: list[str] = field(default_factory=list)  # "save" and/or "turn": which flatness target applies here
    planned: int = 0
    every: int | None = None  # the orchestrated thread's continue-as-new interval
    session: dict[str, Any] | None = None  # the orchestrated thread's session, as its last turn's activity got it

    def series(self, name: str, indexes: range | list[int] | None = None) -> list[float]:
        indexes = range(len(self.turns)) if indexes is None else indexes
        values = [getattr(self.turns[i], name) for i in indexes if i < len(self.turns)]
        return [value for value in values if value is not None]

    def windows(self) -> tuple[range, range]:
        count, size = len(self.turns), window_size(len(self.turns))
        return range(size), range(count - size, count)

    def flat(self, name: str) -> float | None:
        early, late = self.windows()
        return ratio(self.series(name, early), self.series(name, late))


# endregion

# region The stores


@dataclass
class Context:
    """What the sections share."""

    model: ModelBackend
    scheduler: SchedulerBackend
    directory: Path
    redis_url: str | None
    agent_turns: TimedAgentTurns
    activity_recorder: Recorder


Cleanup = Callable[[], Awaitable[None]]
StoreFactory = Callable[[Context, list[str]], Awaitable[tuple[HistoryProvider, Cleanup]]]


async def no_cleanup() -> None:
    return None


def in_memory_store() -> StoreFactory:
    async def build(ctx: Context, sessions: list[str]) -> tuple[HistoryProvider, Cleanup]:
        return InMemoryHistoryProvider(), no_cleanup

    return build


def sqlite_store(window: int | None) -> StoreFactory:
    async def build(ctx: Context, sessions: list[str]) -> tuple[HistoryProvider, Cleanup]:
        database = ctx.directory / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        return CustomChatMessageStore(database, max_messages=window), no_cleanup

    return build


def redis_store(real: bool, window: int | None, framework: bool = False) -> StoreFactory:
    """Our `RedisChatMessageStore`, or the framework's `RedisHistoryProvider` (`framework=True`)."""

    async def build(ctx: Context, sessions: list[str]) -> tuple[HistoryProvider, Cleanup]:
        if real:
            assert ctx.redis_url is not None
            client: redis.Redis = redis.from_url(ctx.redis_url, decode_responses=True)
        else:
            client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        store_class = RedisHistoryProvider if framework else RedisChatMessageStore
        store = store_class(redis_client=client, application_id="bench", agent_id="bench", max_messages=window)
        return store, client.aclose

    return build


def durable_store(store_class: type[DurableTaskChatMessageStore], budget: int | None, every: int) -> StoreFactory:
    """`budget=None`: the largest history budget the store accepts at this continue-as-new interval."""

    async def build(ctx: Context, sessions: list[str]) -> tuple[HistoryProvider, Cleanup]:
        client = ctx.scheduler.client()
        store = store_class(
            client, writes_per_generation=every, history_budget_bytes=budget or largest_budget(store_class, every)
        )

        async def cleanup() -> None:
            for session_id in sessions:
                client.terminate_orchestration(store.instance_id(session_id), recursive=False)
            client.close()

        return store, cleanup

    return build


def largest_budget(store_class: type[DurableTaskChatMessageStore], every: int) -> int:
    return store_class.message_limit_bytes // (2 + every * store_class.copies_per_write)


# endregion

# region 1. Curves and 2. prefilled stores: one session through an agent


def new_agent(ctx: Context, store: HistoryProvider, recorder: Recorder) -> tuple[Agent, OpenAIChatCompletionClient]:
    """An agent on its own chat client (close it with `await client.client.close()`) with the timed store."""
    client = OpenAIChatCompletionClient(**ctx.model.client_kwargs())
    providers = [timed_provider(store, recorder)]
    agent = Agent(
        client=client, instructions="You are a friendly assistant.", name="bench", context_providers=providers
    )
    return agent, client


async def converse(agent: Agent, session_id: str, recorder: Recorder, turns: int, first: int = 0) -> list[Turn]:
    session = agent.create_session(session_id=session_id)
    measured = []
    for number in range(first, first + turns):
        # A message id per turn: the framework de-duplicates id-less messages by content.
        text = CONVERSATION[number % len(CONVERSATION)]
        message = Message("user", [text], message_id=f"{session_id}-user-{number}")
        start = time.perf_counter()
        await agent.run(message, session=session)
        measured.append(recorder.take(elapsed_ms(start)))
    return measured


async def run_curve(ctx: Context, result: Result, factory: StoreFactory) -> None:
    session_id = f"bench-{uuid.uuid4().hex[:8]}"
    store, cleanup = await factory(ctx, [session_id])
    recorder = Recorder()
    agent, chat_client = new_agent(ctx, store, recorder)
    try:
        result.turns = await converse(agent, session_id, recorder, result.planned)
    finally:
        await chat_client.client.close()
        await cleanup()


@contextmanager
def collected_between_turns() -> Iterator[None]:
    """No garbage collection during the block, a full one after it. At ~2,000 messages the framework's per-message
    work makes the collector run during a turn, and its pause (which grows with the live objects) lands in whichever
    step allocates next; here it is paid between turns, so load and save show the store's own work."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def prefill_messages(count: int, session_id: str) -> list[Message]:
    """`count` stored messages of this conversation: user and assistant in turn, each with its own id."""
    return [
        Message("user", [CONVERSATION[(i // 2) % len(CONVERSATION)]], message_id=f"{session_id}-prefill-{i}")
        if i % 2 == 0
        else Message("assistant", [REPLIES[(i // 2) % len(REPLIES)]], message_id=f"{session_id}-prefill-{i}")
        for i in range(count)
    ]


def prefill_writes(count: int) -> int:
    """Saves the prefill takes: writes of ~100 messages, a multiple of 4, so a Durable Task history (continue-as-new
    every 4 or 2 writes) starts the measured turns on a fresh generation."""
    return max(4, 4 * math.ceil(count / 400))


@dataclass
class Prefilled:
    """A store without a window, filled to each size, then `turns` turns timed."""

    key: str
    store: str
    variant: str
    sizes: dict[int, list[Turn]] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)  # messages the store held before the timed turns
    skipped: str | None = None


async def run_prefilled(ctx: Context, row: Prefilled, factory: StoreFactory, sizes: list[int], turns: int) -> None:
    for size in sizes:
        session_id = f"bench-prefill-{uuid.uuid4().hex[:8]}"
        store, cleanup = await factory(ctx, [session_id])
        recorder = Recorder()
        agent, chat_client = new_agent(ctx, store, recorder)
        try:
            session = agent.create_session(session_id=session_id)
            state = session.state.setdefault(store.source_id, {})  # where the in-memory provider keeps messages
            messages, writes = prefill_messages(size, session_id), prefill_writes(size)
            chunk = math.ceil(size / writes)
            for start in range(0, size, chunk):
                await store.save_messages(session_id, messages[start : start + chunk], state=state)
            row.held[size] = len(await store.get_messages(session_id, state=state))  # Durable: waits for the writes
            measured, number = [], size // 2
            for _ in range(turns):  # the session object carries the in-memory provider's state
                text = CONVERSATION[number % len(CONVERSATION)]
                message = Message("user", [text], message_id=f"{session_id}-user-{number}")
                with collected_between_turns():
                    start_time = time.perf_counter()
                    await agent.run(message, session=session)
                    measured.append(recorder.take(elapsed_ms(start_time)))
                number += 1
            row.sizes[size] = measured
        finally:
            await chat_client.client.close()
            await cleanup()


# endregion

# region 3. The Durable Task history's append step


@dataclass
class AppendTiming:
    held: int
    append: list[float]  # ms per append of one turn (2 messages)
    whole: list[float]  # ms to size the whole history once (what each append did before, 1-4 times per step)


def time_appends(sizes: list[int], repetitions: int = 40) -> list[AppendTiming]:
    """`ChatHistory.append` (the orchestrator's step per write) of a 2-message write on a history of each size."""
    timings = []
    for size in sizes:
        base = ChatHistory.new(4, 100 * 1024 * 1024)  # a budget nothing reaches: no trimming in this measurement
        messages = [message.to_dict() for message in prefill_messages(size + 2 * repetitions, "append")]
        ChatHistory(base).append("prefill", {"messages": messages[:size]})
        appends, whole = [], []
        for index in range(repetitions):
            state = copy.deepcopy(base)
            write = {"messages": messages[size + 2 * index : size + 2 * index + 2]}
            start = time.perf_counter()
            ChatHistory(state).append(f"write-{index}", write)
            appends.append(elapsed_ms(start))
            start = time.perf_counter()
            ChatHistory.size(state["messages"])
            whole.append(elapsed_ms(start))
        timings.append(AppendTiming(len(base["messages"]), appends, whole))
    return timings


# endregion

# region 4. The orchestrated thread


class TimedAgentTurns(AgentTurns):
    """The sample's `AgentTurns`, timing each agent turn inside the activity and keeping the session it was given."""

    def __init__(self, client_kwargs: dict[str, Any], recorder: Recorder) -> None:
        super().__init__(client_kwargs)
        self.recorder = recorder
        self.last_session: dict[str, Any] | None = None

    def run_agent_turn(self, ctx: task.ActivityContext, work: dict[str, Any]) -> dict[str, Any]:
        self.last_session = work.get("session")
        start = time.perf_counter()
        outcome = super().run_agent_turn(ctx, work)
        self.recorder.activity = elapsed_ms(start)
        return outcome


async def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise SampleError("the orchestration did not start in time")
        await asyncio.sleep(0.01)


class CountingClient:
    """A scheduler client whose status reads are counted (polls per turn)."""

    def __init__(self, client: Any) -> None:
        self.client, self.reads = client, 0
        read = client.get_orchestration_state

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return read(*args, **kwargs)

        client.get_orchestration_state = counted


@asynccontextmanager
async def orchestrated_thread(
    ctx: Context, *, every: int, budget: int, summarize: bool
) -> AsyncIterator[tuple[OrchestratedThread, CountingClient]]:
    client = ctx.scheduler.client()
    counting = CountingClient(client)
    thread = OrchestratedThread(client, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        thread.start(every=every, session_budget=budget, summarize=summarize)
        await wait_for(lambda: thread.status() is not None)
        yield thread, counting
    finally:
        client.terminate_orchestration(thread.thread_id, recursive=False)
        client.close()


async def run_orchestrated(ctx: Context, result: Result, *, budget: int, summarize: bool) -> None:
    """Ask each turn and wait for its reply with the sample's own client (`OrchestratedThread.ask`)."""
    assert result.every is not None
    recorder = ctx.activity_recorder
    async with orchestrated_thread(ctx, every=result.every, budget=budget, summarize=summarize) as (thread, counter):
        summaries = 0
        with timed_provider_classes(recorder):
            for number in range(result.planned):
                reads = counter.reads
                start = time.perf_counter()
                reply = await thread.ask(CONVERSATION[number % len(CONVERSATION)])
                turn = recorder.take(elapsed_ms(start))
                turn.polls = counter.reads - reads
                turn.position = number % result.every
                turn.summarized = reply.status["summaries"] > summaries
                summaries = reply.status["summaries"]
                result.turns.append(turn)
    result.session = ctx.agent_turns.last_session


# endregion

# region 5. The floor and 6. polling


def floor_orchestrator(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Generator[task.Task, Any, None]:
    """The least a thread's turn can cost on the scheduler: event in, custom status out. With a session in its
    state, each turn also hands the session to an activity and keeps the small change it returns, as the orchestrated
    thread does; the last turn of a generation is published by the next one, as there."""
    ctx.set_custom_status({"answered": state["answered"]})
    for event in range(state["every"]):
        turn = yield ctx.wait_for_external_event(FLOOR_EVENT)
        if state["session"] is not None:
            work = {"session": state["session"], "message": turn["message"]}
            change = yield ctx.call_activity(floor_turn, input=work)
            state["added"] = [*state["added"], *change["added"]][-10:]
        state["answered"] = [*state["answered"], turn["turn_id"]][-5:]
        if event < state["every"] - 1:
            ctx.set_custom_status({"answered": state["answered"]})
    ctx.continue_as_new(state, save_events=True)


def floor_turn(ctx: task.ActivityContext, work: dict[str, Any]) -> dict[str, Any]:
    """No agent: the turn's two messages, as the orchestrated thread's activity returns them."""
    added = [Message("user", [work["message"]]).to_dict(), Message("assistant", ["ok"]).to_dict()]
    return {"reply": "ok", "added": added}


def register_floor(worker: TaskHubGrpcWorker) -> None:
    worker.add_orchestrator(floor_orchestrator)
    worker.add_activity(floor_turn)


def backoff(waited: float) -> float:
    """The samples' poll delay: a tenth of the time waited so far, 5 to 100 ms."""
    return min(max(waited / 10, 0.005), 0.1)


def fixed_5ms(waited: float) -> float:
    return 0.005


async def poll_until(read: Callable[[], Any], done: Callable[[Any], bool], delay: Callable[[float], float]) -> int:
    """Read until `done(value)`; returns how many reads it took."""
    start, reads = time.monotonic(), 0
    while True:
        reads += 1
        if done(await asyncio.to_thread(read)):
            return reads
        await asyncio.sleep(delay(time.monotonic() - start))


@dataclass
class Series:
    """Round trips of one kind: milliseconds and status reads per turn."""

    label: str
    totals: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)
    payload: int = 0


async def run_floor(ctx: Context, turns: int, session: dict[str, Any] | None, label: str) -> Series:
    client = ctx.scheduler.client()
    instance = f"bench-floor-{uuid.uuid4().hex[:8]}"
    series = Series(label, payload=len(json.dumps(session)) if session else 0)
    try:
        state = {"every": EVERY, "session": session, "answered": [], "added": []}
        client.schedule_new_orchestration(floor_orchestrator, input=state, instance_id=instance)

        def status() -> Any:
            found = client.get_orchestration_state(instance)
            return found.get_custom_status() if found else None

        await poll_until(status, lambda value: value is not None, backoff)
        for number in range(turns):
            turn_id = f"turn-{number}"
            start = time.perf_counter()
            data = {"turn_id": turn_id, "message": CONVERSATION[number % len(CONVERSATION)]}
            client.raise_orchestration_event(instance, FLOOR_EVENT, data=data)
            reads = await poll_until(status, lambda value, t=turn_id: t in (value or {}).get("answered", []), backoff)
            series.totals.append(elapsed_ms(start))
            series.polls.append(reads)
    finally:
        client.terminate_orchestration(instance, recursive=False)
        client.close()
    return series


async def run_polling(ctx: Context, turns: int) -> list[Series]:
    """One orchestrated thread (~100-message budget); turns alternate between the sample's own wait (backoff) and a
    client that polls the same custom status every 5 ms."""
    sample, fixed = (
        Series("the samples' backoff (5 ms, then a tenth of the time waited, up to 100 ms)"),
        Series("fixed 5 ms (before)"),
    )
    async with orchestrated_thread(ctx, every=EVERY, budget=ORCHESTRATED_WINDOW_BYTES, summarize=False) as (
        thread,
        counter,
    ):
        for number in range(2 * turns):
            text = CONVERSATION[number % len(CONVERSATION)]
            reads = counter.reads
            start = time.perf_counter()
            if number % 2 == 0:
                await thread.ask(text)
                series = sample
            else:
                turn_id = thread.raise_turn(text)

                def answered(status: Any, t: str = turn_id) -> bool:
                    return any(outcome["turn_id"] == t for outcome in (status or {}).get("recent", []))

                await poll_until(thread.status, answered, fixed_5ms)
                series = fixed
            series.totals.append(elapsed_ms(start))
            series.polls.append(counter.reads - reads)
    return [fixed, sample]


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
    every: int | None = None


ORCHESTRATED = "OrchestratedThread (round trip)"
DURABLE_EVERY = 4  # the chat message store's default writes per generation


def curve(factory: StoreFactory) -> Callable[[Context, Result], Awaitable[None]]:
    return lambda ctx, result: run_curve(ctx, result, factory)


def orchestrated_variant(budget: int, summarize: bool) -> Callable[[Context, Result], Awaitable[None]]:
    return lambda ctx, result: run_orchestrated(ctx, result, budget=budget, summarize=summarize)


def variants() -> list[Variant]:
    window = f"max_messages={WINDOW_MESSAGES}"
    largest_chat = largest_budget(DurableTaskChatMessageStore, DURABLE_EVERY)
    largest_activity = largest_budget(DurableTaskActivityChatMessageStore, DURABLE_EVERY)
    can = f"continue-as-new every {EVERY} turns"
    redis_ours = "RedisChatMessageStore (ours"
    return [
        Variant("in-memory", "InMemoryHistoryProvider (framework default)", "unbounded", curve(in_memory_store()), []),
        Variant("sqlite", "CustomChatMessageStore (SQLite)", "unbounded", curve(sqlite_store(None)), []),
        Variant(
            "sqlite-window", "CustomChatMessageStore (SQLite)", window, curve(sqlite_store(WINDOW_MESSAGES)), ["turn"]
        ),
        Variant("redis-fake", f"{redis_ours}, fakeredis)", "unbounded", curve(redis_store(False, None)), []),
        Variant(
            "redis-fake-window",
            f"{redis_ours}, fakeredis)",
            window,
            curve(redis_store(False, WINDOW_MESSAGES)),
            ["turn"],
        ),
        Variant(
            "redis-server",
            f"{redis_ours}, redis-server)",
            "unbounded",
            curve(redis_store(True, None)),
            [],
            needs_redis_server=True,
        ),
        Variant(
            "redis-server-window",
            f"{redis_ours}, redis-server)",
            window,
            curve(redis_store(True, WINDOW_MESSAGES)),
            ["turn"],
            needs_redis_server=True,
        ),
        Variant(
            "durable",
            "DurableTaskChatMessageStore",
            f"budget {largest_chat:,} B (the largest at {DURABLE_EVERY} writes per generation)",
            curve(durable_store(DurableTaskChatMessageStore, None, DURABLE_EVERY)),
            [],
        ),
        Variant(
            "durable-window",
            "DurableTaskChatMessageStore",
            f"budget {DURABLE_WINDOW_BYTES:,} B",
            curve(durable_store(DurableTaskChatMessageStore, DURABLE_WINDOW_BYTES, DURABLE_EVERY)),
            ["turn"],
        ),
        Variant(
            "activity",
            "DurableTaskActivityChatMessageStore",
            f"budget {largest_activity:,} B (the largest at {DURABLE_EVERY} writes per generation)",
            curve(durable_store(DurableTaskActivityChatMessageStore, None, DURABLE_EVERY)),
            [],
        ),
        Variant(
            "activity-window",
            "DurableTaskActivityChatMessageStore",
            f"budget {ACTIVITY_WINDOW_BYTES:,} B (messages and their metadata)",
            curve(durable_store(DurableTaskActivityChatMessageStore, ACTIVITY_WINDOW_BYTES, DURABLE_EVERY)),
            ["turn"],
        ),
        Variant(
            "orchestrated-window",
            ORCHESTRATED,
            f"session {ORCHESTRATED_WINDOW_BYTES:,} B, summaries off, {can}",
            orchestrated_variant(ORCHESTRATED_WINDOW_BYTES, summarize=False),
            ["turn"],
            every=EVERY,
        ),
        Variant(
            "orchestrated-summaries",
            ORCHESTRATED,
            f"session {ORCHESTRATED_WINDOW_BYTES:,} B, summaries on, {can}",
            orchestrated_variant(ORCHESTRATED_WINDOW_BYTES, summarize=True),
            ["turn"],
            every=EVERY,
        ),
        Variant(
            "orchestrated",
            ORCHESTRATED,
            f"session {SAMPLE_SESSION_BUDGET:,} B, summaries on, {can} (the sample's defaults)",
            orchestrated_variant(SAMPLE_SESSION_BUDGET, summarize=True),
            [],
            every=EVERY,
        ),
    ]


@dataclass
class PrefilledVariant:
    key: str
    store: str
    variant: str
    factory: StoreFactory
    target: bool = True  # save flat applies (not to the framework's own providers: they are the comparison)
    needs_redis_server: bool = False


def prefilled_variants() -> list[PrefilledVariant]:
    largest_chat = largest_budget(DurableTaskChatMessageStore, DURABLE_EVERY)
    # The activity store keeps a metadata record beside each message (~470 bytes a message here): its largest budget
    # at the default 4 writes per generation holds ~470 messages, so it holds fewer than the larger prefill.
    largest_activity = largest_budget(DurableTaskActivityChatMessageStore, DURABLE_EVERY)
    framework, ours = "RedisHistoryProvider (framework", "RedisChatMessageStore (ours"
    return [
        PrefilledVariant(
            "in-memory", "InMemoryHistoryProvider (framework default)", "unbounded", in_memory_store(), target=False
        ),
        PrefilledVariant("sqlite", "CustomChatMessageStore (SQLite)", "unbounded", sqlite_store(None)),
        PrefilledVariant(
            "redis-framework-fake", f"{framework}, fakeredis)", "unbounded", redis_store(False, None, True), False
        ),
        PrefilledVariant("redis-fake", f"{ours}, fakeredis)", "unbounded", redis_store(False, None)),
        PrefilledVariant(
            "redis-framework-server",
            f"{framework}, redis-server)",
            "unbounded",
            redis_store(True, None, True),
            False,
            needs_redis_server=True,
        ),
        PrefilledVariant(
            "redis-server", f"{ours}, redis-server)", "unbounded", redis_store(True, None), needs_redis_server=True
        ),
        PrefilledVariant(
            "durable",
            "DurableTaskChatMessageStore",
            f"budget {largest_chat:,} B (the largest), {DURABLE_EVERY} writes per generation",
            durable_store(DurableTaskChatMessageStore, None, DURABLE_EVERY),
        ),
        PrefilledVariant(
            "activity",
            "DurableTaskActivityChatMessageStore",
            f"budget {largest_activity:,} B (the largest), {DURABLE_EVERY} writes per generation",
            durable_store(DurableTaskActivityChatMessageStore, None, DURABLE_EVERY),
        ),
    ]


SECTIONS = ["prefilled", "append", "floor", "polling"]


# endregion

# region Reporting


def curve_table(results: list[Result]) -> str:
    header = [
        "Store",
        "Variant",
        "Turns",
        "Turn ms first window (med / p95)",
        "Turn ms last window",
        "Turn x",
        "Load ms first window",
        "Load ms last window",
        "Load x",
        "Save ms first window",
        "Save ms last window",
        "Save x",
        "Messages loaded at the last turn",
        "Whole turn flat (≤ 1.3x)",
    ]
    rows = []
    for result in results:
        if result.skipped:
            rows.append([result.store, result.variant, "0", *[f"not run: {result.skipped}"] * (len(header) - 3)])
            continue
        early, late = result.windows()
        row = [result.store, result.variant, str(len(result.turns))]
        for name in ("total", "load", "save"):
            first, last = result.series(name, early), result.series(name, late)
            row += [cell(first), cell(last), ratio_cell(ratio(first, last))]
        flat = result.flat("total")
        if "turn" in result.targets:
            target = verdict(flat is not None and flat <= TARGET_FLAT)
        else:
            target = "no target (grows to its budget)" if result.every else "no window (save: see section 2)"
        loaded = result.turns[-1].loaded
        rows.append([*row, "n/a" if loaded is None else str(loaded), target])
    return table(header, rows)


def prefilled_table(rows_in: list[Prefilled], sizes: list[int]) -> str:
    small, large = sizes[0], sizes[-1]
    header = [
        "Store",
        "Variant",
        "Messages held before the timed turns",
        f"Load ms at ~{small:,} (med / p95)",
        f"Load ms at ~{large:,}",
        "Load x",
        f"Save ms at ~{small:,}",
        f"Save ms at ~{large:,}",
        "Save x",
        f"Turn ms at ~{small:,}",
        f"Turn ms at ~{large:,}",
        "Turn x",
        "Save flat (≤ 1.3x)",
    ]
    rows = []
    for row in rows_in:
        if row.skipped:
            rows.append([row.store, row.variant, *[f"not run: {row.skipped}"] * (len(header) - 2)])
            continue
        held = " / ".join(f"{row.held[size]:,}" for size in sizes)
        cells = [row.store, row.variant, held]
        for name in ("load", "save", "total"):
            first = [getattr(turn, name) for turn in row.sizes[small]]
            last = [getattr(turn, name) for turn in row.sizes[large]]
            cells += [cell(first), cell(last), ratio_cell(ratio(first, last))]
        save_x = ratio([t.save for t in row.sizes[small]], [t.save for t in row.sizes[large]])  # type: ignore[misc]
        target = prefilled_target(row.key)
        cells.append(verdict(save_x is not None and save_x <= TARGET_FLAT) if target else "the comparison")
        rows.append(cells)
    return table(header, rows)


def prefilled_target(key: str) -> bool:
    return next(variant.target for variant in prefilled_variants() if variant.key == key)


def append_table(timings: list[AppendTiming]) -> str:
    header = ["Messages held", "Append one turn (2 messages) ms, med / p95", "Size the whole history once ms"]
    rows = [[f"{timing.held:,}", cell(timing.append, 3), cell(timing.whole, 3)] for timing in timings]
    if len(timings) > 1:
        first, last = timings[0], timings[-1]
        rows.append(
            [
                "x (largest / smallest)",
                ratio_cell(ratio(first.append, last.append)),
                ratio_cell(ratio(first.whole, last.whole)),
            ]
        )
    return table(header, rows)


def positions(result: Result) -> list[tuple[str, list[int]]]:
    """Turn indexes by their place in a continue-as-new generation (summarisation turns apart)."""
    every = result.every or 1
    plain = [i for i, turn in enumerate(result.turns) if not turn.summarized]
    named = [
        ("first of a generation (after a continue-as-new)", [i for i in plain if i > 0 and i % every == 0]),
        ("middle of a generation", [i for i in plain if 0 < i % every < every - 1]),
        ("last of a generation (its step continues as new)", [i for i in plain if i % every == every - 1]),
    ]
    return [(name, indexes) for name, indexes in named if indexes]


def orchestrated_table(results: list[Result]) -> str:
    header = [
        "Orchestrated thread",
        "Turns",
        "Which turns",
        "Count",
        "Round trip ms (med / p95)",
        "Agent turn in the activity",
        "Compaction (after_run)",
        "Scheduler and waiting (round trip - activity)",
        "Status reads per turn (med / max)",
    ]
    rows = []
    for result in results:
        if not result.turns:
            continue
        groups = [("all turns", list(range(len(result.turns))))]
        groups += positions(result)
        if summarized := [i for i, turn in enumerate(result.turns) if turn.summarized]:
            groups.append(("turns that wrote a summary", summarized))
        for name, indexes in groups:
            turns = [result.turns[i] for i in indexes]
            overhead = [turn.total - turn.activity for turn in turns if turn.activity is not None]
            polls = [turn.polls for turn in turns if turn.polls is not None]
            rows.append(
                [
                    result.variant,
                    str(len(result.turns)),
                    name,
                    str(len(indexes)),
                    cell(result.series("total", indexes)),
                    cell(result.series("activity", indexes)),
                    cell(result.series("compaction", indexes)),
                    cell(overhead),
                    f"{median(polls):.0f} / {max(polls)}" if polls else "n/a",
                ]
            )
    return table(header, rows)


def overhead(result: Result) -> list[float]:
    return [turn.total - turn.activity for turn in result.turns if turn.activity is not None]


def floor_table(floors: list[Series], orchestrated: list[Result]) -> str:
    header = ["Round trip", "Turns", "Payload bytes", "ms (med / p95)", "Status reads per turn (med / max)"]
    rows = [
        [s.label, str(len(s.totals)), f"{s.payload:,}", cell(s.totals), f"{median(s.polls):.0f} / {max(s.polls)}"]
        for s in floors
    ]
    lines = [table(header, rows), ""]
    with_payload = floors[-1]
    header = [
        "Orchestrated thread",
        "Scheduler and waiting ms (round trip - activity; med / p95)",
        f"x the floor with the session ({median(with_payload.totals):.1f} ms)",
        f"x the empty floor ({median(floors[0].totals):.1f} ms)",
        f"Target ≤ {TARGET_FLOOR}x the floor with the session",
    ]
    rows = []
    for result in orchestrated:
        values = overhead(result)
        if not values:
            continue
        to_payload = median(values) / median(with_payload.totals)
        to_empty = median(values) / median(floors[0].totals)
        rows.append(
            [
                result.variant,
                cell(values),
                f"{to_payload:.2f}x",
                f"{to_empty:.2f}x",
                verdict(to_payload <= TARGET_FLOOR),
            ]
        )
    lines.append(table(header, rows))
    return "\n".join(lines)


def polling_table(series: list[Series]) -> str:
    header = ["Client polling", "Turns", "Round trip ms (med / p95)", "Status reads per turn (med / p95 / max)"]
    rows = [
        [
            s.label,
            str(len(s.totals)),
            cell(s.totals),
            f"{median(s.polls):.0f} / {percentile(s.polls, 0.95):.0f} / {max(s.polls)}",
        ]
        for s in series
    ]
    return table(header, rows)


@dataclass
class Report:
    turns: int
    curves: list[Result] = field(default_factory=list)
    prefill_sizes: list[int] = field(default_factory=list)
    prefilled: list[Prefilled] = field(default_factory=list)
    appends: list[AppendTiming] = field(default_factory=list)
    floors: list[Series] = field(default_factory=list)
    polling: list[Series] = field(default_factory=list)
    seconds: float = 0.0
    prefill_turns: int = PREFILL_TURNS

    def orchestrated(self) -> list[Result]:
        return [result for result in self.curves if result.every is not None and result.turns]

    def targets(self) -> str:
        rows = []
        for row in self.prefilled:
            if row.skipped or not prefilled_target(row.key):
                continue
            small, large = self.prefill_sizes[0], self.prefill_sizes[-1]
            x = ratio([t.save for t in row.sizes[small]], [t.save for t in row.sizes[large]])  # type: ignore[misc]
            rows.append(
                [
                    f"Save flat (≤ {TARGET_FLAT}x), prefilled ~{small:,} vs ~{large:,}",
                    f"{row.store}, {row.variant}",
                    ratio_cell(x),
                    verdict(x is not None and x <= TARGET_FLAT),
                ]
            )
        for result in self.curves:
            if "turn" in result.targets and result.turns:
                first, last = result.windows()
                x = result.flat("total")
                rows.append(
                    [
                        f"Whole turn flat (≤ {TARGET_FLAT}x), turns {last.start + 1}-{last.stop} vs "
                        f"{first.start + 1}-{first.stop}",
                        f"{result.store}, {result.variant}",
                        ratio_cell(x),
                        verdict(x is not None and x <= TARGET_FLAT),
                    ]
                )
        if self.floors:
            payload = median(self.floors[-1].totals)
            for result in self.orchestrated():
                x = median(overhead(result)) / payload
                rows.append(
                    [
                        f"Scheduler overhead ≤ {TARGET_FLOOR}x the floor with the session",
                        f"{result.store}, {result.variant}",
                        f"{x:.2f}x",
                        verdict(x <= TARGET_FLOOR),
                    ]
                )
        return table(["Target", "Store", "Measured", "Result"], rows)

    def text(self) -> str:
        parts = [
            f"# Thread store benchmark: {self.turns} turns per bounded store",
            "",
            f"Machine: {machine_description()}.  ",
            f"Model: the offline model ({OFFLINE_MODEL_NAME}) over loopback HTTP; scheduler: embedded, over gRPC; "
            f"model, scheduler, worker and client in one process. The whole run took {self.seconds:.0f} s. "
            "Milliseconds, median / p95; x = median of the later window / median of the earlier one.",
            "",
        ]
        if self.curves:
            parts += [
                "## 1. Per-turn cost as one conversation grows",
                "",
                "Turn = the whole `agent.run` (orchestrated thread: raise the event, wait for the reply in the custom "
                "status). Load = the history provider's `before_run`, save = its `after_run` (orchestrated thread: "
                "the in-memory history inside the activity). Windows: the first and last tenth of a row's turns, at "
                "most 100. Stores without a window run fewer turns (`--unbounded-turns`); their save target is "
                "measured in section 2.",
                "",
                curve_table(self.curves),
                "",
            ]
        if self.prefilled:
            parts += [
                "## 2. Stores without a window, prefilled",
                "",
                f"Each store filled through its own `save_messages` (user/assistant pairs, writes of ~100 messages), "
                f"then {self.prefill_turns} agent turns timed; the second figure of 'held' is the larger fill. The "
                "garbage collector runs between these turns, not during them: at ~2,000 messages the framework's "
                "per-message work triggers collections whose pause grows with the live objects and lands in whichever "
                "step allocates next.",
                "",
                prefilled_table(self.prefilled, self.prefill_sizes),
                "",
            ]
        if self.appends:
            parts += [
                "## 3. Durable Task history: the orchestrator's append step",
                "",
                "`ChatHistory.append` of one turn (2 messages) keeps a running byte total and sizes only the new "
                "rows. Beside it, what sizing the whole history once costs (the append did that on every write and "
                "again on replay, 1-4 times per step, before the running total).",
                "",
                append_table(self.appends),
                "",
            ]
        if self.orchestrated():
            parts += [
                "## 4. Orchestrated thread: which turns cost what",
                "",
                f"Continue-as-new every {EVERY} events: the generation's last turn's step continues as new, and its "
                "reply is published by the next generation's first step. Turns that wrote a summary are counted "
                "apart from the position rows.",
                "",
                orchestrated_table(self.orchestrated()),
                "",
            ]
        if self.floors:
            parts += [
                "## 5. The floor: the least a turn costs on the embedded scheduler",
                "",
                "Event raised -> orchestrator sets custom status -> client sees it, the client polling as the samples "
                "do. With the session: the orchestration keeps the orchestrated thread's session (as its activity "
                "received it at the last turn of the first section's ~100-message row) in its state, hands it to a "
                "no-op activity each turn and keeps the two messages it returns, continuing as new every "
                f"{EVERY} turns.",
                "",
                floor_table(self.floors, self.orchestrated()),
                "",
            ]
        if self.polling:
            parts += [
                "## 6. Polling: the samples' backoff vs a fixed 5 ms poll",
                "",
                "One orchestrated thread (session budget "
                f"{ORCHESTRATED_WINDOW_BYTES:,} B, summaries off); turns alternate between the two clients.",
                "",
                polling_table(self.polling),
                "",
            ]
        parts += ["## Targets", "", self.targets(), ""]
        return "\n".join(parts)


def write_csv(results: list[Result], path: Path) -> None:
    ran = [result for result in results if result.turns]
    names = ("total", "load", "save", "activity")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["turn", *[f"{result.key} {name}" for result in ran for name in names]])
        for index in range(max((len(result.turns) for result in ran), default=0)):
            row: list[Any] = [index + 1]
            for result in ran:
                turn = result.turns[index] if index < len(result.turns) else None
                for name in names:
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
        if result.targets:
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
    figure.suptitle(f"Per-turn cost of the thread stores over {turns} turns (dashed: bounded)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# endregion


@dataclass
class Plan:
    turns: int
    unbounded_turns: int
    prefill_sizes: list[int]
    prefill_turns: int
    floor_turns: int
    polling_turns: int
    only: set[str] | None

    def wants(self, key: str) -> bool:
        return self.only is None or key in self.only


def progress(text: str) -> None:
    print(text, flush=True)


async def run_all(plan: Plan, ctx: Context, report: Report, probe: ModelProbe) -> None:
    async def checked(name: str, work: Awaitable[Any]) -> Any:
        rejected, start = len(probe.rejections), time.perf_counter()
        value = await work
        if probe.rejections[rejected:]:
            raise SampleError(f"{name}: the offline model rejected a request: {probe.rejections[rejected]}")
        progress(f"{name}: {time.perf_counter() - start:.1f} s")
        return value

    for variant in variants():
        if not plan.wants(variant.key):
            continue
        planned = plan.turns if "turn" in variant.targets else min(plan.turns, plan.unbounded_turns)
        result = Result(variant.key, variant.store, variant.variant, targets=variant.targets, planned=planned)
        result.every = variant.every
        report.curves.append(result)
        if variant.needs_redis_server and ctx.redis_url is None:
            result.skipped = "redis-server is not on PATH"
            continue
        await checked(f"{variant.key} ({planned} turns)", variant.run(ctx, result))
    if plan.wants("prefilled"):
        report.prefill_sizes, report.prefill_turns = plan.prefill_sizes, plan.prefill_turns
        for chosen in prefilled_variants():
            row = Prefilled(chosen.key, chosen.store, chosen.variant)
            report.prefilled.append(row)
            if chosen.needs_redis_server and ctx.redis_url is None:
                row.skipped = "redis-server is not on PATH"
                continue
            work = run_prefilled(ctx, row, chosen.factory, plan.prefill_sizes, plan.prefill_turns)
            await checked(f"prefilled {chosen.key}", work)
    if plan.wants("append"):
        report.appends = time_appends(plan.prefill_sizes)
    if plan.wants("floor"):
        session = next((r.session for r in report.curves if r.key == "orchestrated-window" and r.session), None)
        if session is None:  # that row did not run: take the session of a thread of as many turns
            result = Result("floor-session", ORCHESTRATED, "", planned=min(plan.turns, 200), every=EVERY)
            work = run_orchestrated(ctx, result, budget=ORCHESTRATED_WINDOW_BYTES, summarize=False)
            await checked("a session for the floor", work)
            session = result.session
        empty = await checked("floor", run_floor(ctx, plan.floor_turns, None, FLOOR_EMPTY))
        loaded = await checked("floor with the session", run_floor(ctx, plan.floor_turns, session, FLOOR_WITH_SESSION))
        report.floors = [empty, loaded]
    if plan.wants("polling"):
        report.polling = await checked("polling", run_polling(ctx, plan.polling_turns))


@asynccontextmanager
async def bench_context(redis_url: str | None, directory: Path) -> AsyncIterator[Context]:
    scheduler, model = embedded_scheduler(), offline_model()
    recorder = Recorder()
    agent_turns = TimedAgentTurns(model.client_kwargs(), recorder)
    worker = new_worker(scheduler.worker(), agent_turns)
    DurableTaskChatMessageStore.register(worker)
    DurableTaskActivityChatMessageStore.register(worker)
    register_floor(worker)
    # Idle through the long non-durable sections, the worker's work-item stream times out and reconnects, logging a
    # warning each time: not news for a benchmark.
    logging.getLogger("durabletask.samples.worker").setLevel(logging.ERROR)
    worker.start()
    try:
        yield Context(model, scheduler, directory, redis_url, agent_turns, recorder)
    finally:
        await asyncio.to_thread(worker.stop)  # lets a running turn finish...
        agent_turns.close()  # ... before its chat client closes
        scheduler.stop()


async def main(plan: Plan, out: Path) -> Report:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SampleError(f"cannot write results to {out}: {error}") from None
    turns = f"{plan.turns} turns per bounded store ({plan.unbounded_turns} without a window)"
    progress(f"Benchmark: {turns}; results go to {out}")
    report = Report(plan.turns)
    start = time.perf_counter()
    with (
        ModelProbe(offline_model_server()) as probe,
        tempfile.TemporaryDirectory(prefix="thread-bench-") as directory,
        local_redis_server() as redis_url,
    ):
        async with bench_context(redis_url, Path(directory)) as ctx:
            await run_all(plan, ctx, report, probe)
    report.seconds = time.perf_counter() - start
    text = report.text()
    stem = f"thread_stores_{plan.turns}_turns"
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    write_csv(report.curves, out / f"{stem}.csv")
    print(f"\n{text}")
    if write_plot(report.curves, plan.turns, out / f"{stem}.png"):
        print(f"Wrote {out / f'{stem}.md'}, {out / f'{stem}.png'} and {out / f'{stem}.csv'}.")
    else:
        print(f"Wrote {out / f'{stem}.md'} and {out / f'{stem}.csv'}.")
        print("No plot: matplotlib is not installed (pip install -r bench/requirements.txt).")
    return report


def whole_numbers(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if len(values) != 2 or values[0] < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give two sizes of at least 2, e.g. 20,2000")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--turns", type=int, help=f"turns per bounded store (default {FULL_TURNS}; {QUICK_TURNS} with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TURNS} turns, prefills of {QUICK_PREFILL_SIZES}")
    parser.add_argument(
        "--unbounded-turns",
        type=int,
        default=UNBOUNDED_TURNS,
        help=f"turns for the stores without a window (default {UNBOUNDED_TURNS}): their turns grow with the history",
    )
    parser.add_argument("--prefill", type=whole_numbers, help=f"the two prefill sizes (default {PREFILL_SIZES})")
    parser.add_argument("--prefill-turns", type=int, default=PREFILL_TURNS, help="turns timed after each prefill")
    parser.add_argument("--floor-turns", type=int, default=FLOOR_TURNS, help="round trips per floor row")
    parser.add_argument("--polling-turns", type=int, default=POLLING_TURNS, help="turns per polling client")
    keys = ", ".join([variant.key for variant in variants()] + SECTIONS)
    parser.add_argument("--only", help=f"comma-separated rows and sections to run (default: all): {keys}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the table, plot and CSV")
    arguments = parser.parse_args(argv)
    arguments.turns = arguments.turns or (QUICK_TURNS if arguments.quick else FULL_TURNS)
    arguments.prefill = arguments.prefill or list(QUICK_PREFILL_SIZES if arguments.quick else PREFILL_SIZES)
    counts = (arguments.turns, arguments.unbounded_turns, arguments.prefill_turns, arguments.floor_turns)
    if min(*counts, arguments.polling_turns) < 2:
        parser.error("--turns, --unbounded-turns, --prefill-turns, --floor-turns and --polling-turns must be >= 2")
    known = {variant.key for variant in variants()} | set(SECTIONS)
    only = {key.strip() for key in arguments.only.split(",") if key.strip()} if arguments.only else None
    if only is not None and only - known:
        parser.error(f"unknown --only key(s) {', '.join(sorted(only - known))}; known: {keys}")
    arguments.plan = Plan(
        arguments.turns,
        arguments.unbounded_turns,
        arguments.prefill,
        arguments.prefill_turns,
        arguments.floor_turns,
        arguments.polling_turns,
        only,
    )
    return arguments


if __name__ == "__main__":
    arguments = parse_args()
    run_sample(main(arguments.plan, arguments.out))
