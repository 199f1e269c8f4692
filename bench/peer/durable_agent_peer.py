"""Our orchestrated thread beside the official durable agent (`agent-framework-durabletask`), turn for turn.

Both run on the same embedded Durable Task scheduler (over gRPC), the same worker and the same offline model, in one
process. Turns alternate between our `OrchestratedThread` (the sample's defaults, its own client) and the official
`DurableAIAgent` (`DurableAIAgentWorker` / `DurableAIAgentClient`: one durable entity per session, the client polls
the entity's state) with a fast poll; then the official agent alone with its default poll interval (1 s).

Needs its own virtual environment (the package pins python-dateutil < 3): `make bench` creates .venv-bench-peer from
bench/peer/requirements.txt. Output: a table on stdout and in `bench/results/peer_durable_agent.md` (`--out DIR`).

    .venv-bench-peer/bin/python bench/peer/durable_agent_peer.py              # 100 turns each, 20 at 1 s polling
    .venv-bench-peer/bin/python bench/peer/durable_agent_peer.py --turns 10 --default-turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_DIR))

from agent_framework import Agent  # noqa: E402
from agent_framework.openai import OpenAIChatCompletionClient  # noqa: E402
from agent_framework_durabletask import (  # noqa: E402
    DurableAIAgentClient,
    DurableAIAgentWorker,
    run_agent_coroutine,
)
from durabletask import task  # noqa: E402
from durabletask.entities import EntityInstanceId  # noqa: E402

from bench.measure import cell, machine_description, median, percentile, ratio_cell, table, verdict  # noqa: E402
from durable_task_orchestrated_thread import OrchestratedThread  # noqa: E402
from durable_task_orchestrated_thread_roles import AgentTurns, new_worker  # noqa: E402
from sample_support import SampleError, run_sample  # noqa: E402
from sample_support.model import offline_model  # noqa: E402
from sample_support.offline_model import OFFLINE_MODEL_NAME, offline_model_server  # noqa: E402
from sample_support.scheduler import embedded_scheduler  # noqa: E402
from tests.model_probe import ModelProbe  # noqa: E402

RESULTS = REPO_DIR / "bench" / "results" / "peer_durable_agent.md"
TURNS = 100
DEFAULT_POLLING_TURNS = 20
FAST_POLL_SECONDS = 0.005
LAST = 20  # the "last turns" window
TARGET = 0.5  # ours / theirs, medians over all turns
PACKAGES = ["agent-framework-core", "agent-framework-durabletask", "durabletask", "python-dateutil"]
CONVERSATION = ["My name is Alice.", "I live in Paris.", "What is my name?", "Tell me a joke.", "Where do I live?"]
INSTRUCTIONS = "You are a friendly travel assistant. Answer briefly."


@dataclass
class Row:
    label: str
    totals: list[float] = field(default_factory=list)  # ms per turn
    reads: list[int] = field(default_factory=list)  # status or entity reads per turn
    state_bytes: int = 0  # what the client re-reads: custom status (ours) or the entity state (theirs), at the end
    session_bytes: int = 0  # the session / conversation the agent turn loads, at the end
    replies: list[str] = field(default_factory=list)


class Counted:
    """Counts the calls of one method of a client instance."""

    def __init__(self, target: Any, name: str) -> None:
        self.calls = 0
        method = getattr(target, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return method(*args, **kwargs)

        setattr(target, name, counted)


class SessionSizes(AgentTurns):
    """The sample's `AgentTurns`, noting the size of the session each turn's activity receives."""

    session_bytes = 0

    def run_agent_turn(self, ctx: task.ActivityContext, work: dict[str, Any]) -> dict[str, Any]:
        self.session_bytes = len(json.dumps(work["session"])) if work.get("session") else 0
        return super().run_agent_turn(ctx, work)


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def timed(row: Row, reads: Counted, call: Callable[[], Any]) -> str:
    before, start = reads.calls, time.perf_counter()
    text = await call()
    row.totals.append(elapsed_ms(start))
    row.reads.append(reads.calls - before)
    row.replies.append(text)
    return text


async def run(turns: int, default_turns: int) -> tuple[list[Row], float]:
    scheduler, model = embedded_scheduler(), offline_model()
    ours_turns = SessionSizes(model.client_kwargs())
    worker = new_worker(scheduler.worker(), ours_turns)
    peer_client = OpenAIChatCompletionClient(**model.client_kwargs())
    peer_agent = Agent(client=peer_client, instructions=INSTRUCTIONS, name="peer")
    DurableAIAgentWorker(worker).add_agent(peer_agent)
    logging.getLogger("durabletask.samples.worker").setLevel(logging.ERROR)
    worker.start()
    ours_client, peer_fast_client, peer_default_client = (scheduler.client() for _ in range(3))
    ours_reads = Counted(ours_client, "get_orchestration_state")
    fast_reads = Counted(peer_fast_client, "get_entity")
    default_reads = Counted(peer_default_client, "get_entity")
    ours = Row("ours: OrchestratedThread (the sample's defaults; polls 5 ms, backing off to 100 ms)")
    fast = Row(f"official DurableAIAgent, poll_interval_seconds={FAST_POLL_SECONDS}")
    slow = Row("official DurableAIAgent, its default poll_interval_seconds=1.0")
    thread = OrchestratedThread(ours_client, f"peer-bench-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    with ModelProbe(offline_model_server()) as probe:
        try:
            thread.start()
            fast_agent = DurableAIAgentClient(
                peer_fast_client, poll_interval_seconds=FAST_POLL_SECONDS, max_poll_retries=100_000
            ).get_agent("peer")
            fast_session = fast_agent.create_session()
            for number in range(turns):  # alternate, so both see the same machine load
                text = CONVERSATION[number % len(CONVERSATION)]
                await timed(ours, ours_reads, lambda text=text: answer(thread, text))
                await timed(
                    fast, fast_reads, lambda text=text: asyncio.to_thread(peer_turn, fast_agent, fast_session, text)
                )
            default_agent = DurableAIAgentClient(peer_default_client).get_agent("peer")
            default_session = default_agent.create_session()
            for number in range(default_turns):
                text = CONVERSATION[number % len(CONVERSATION)]
                await timed(
                    slow,
                    default_reads,
                    lambda text=text: asyncio.to_thread(peer_turn, default_agent, default_session, text),
                )
            ours.state_bytes = len(json.dumps(thread.status()))
            ours.session_bytes = ours_turns.session_bytes
            for row, client, session in (
                (fast, peer_fast_client, fast_session),
                (slow, peer_default_client, default_session),
            ):
                row.state_bytes = row.session_bytes = entity_state_bytes(client, session)
        finally:
            ours_client.terminate_orchestration(thread.thread_id, recursive=False)
            await asyncio.to_thread(worker.stop)
            ours_turns.close()
            run_agent_coroutine(peer_client.client.close())  # on the loop the official worker runs agents on
            for client in (ours_client, peer_fast_client, peer_default_client):
                client.close()
            scheduler.stop()
        if probe.rejections:
            raise SampleError(f"the offline model rejected a request: {probe.rejections[0]}")
    check_replies([ours, fast, slow])
    return [ours, fast, slow], time.perf_counter() - start


async def answer(thread: OrchestratedThread, text: str) -> str:
    return (await thread.ask(text)).text


def peer_turn(agent: Any, session: Any, text: str) -> str:
    response = agent.run(text, session=session)
    if any(content.type == "error" for message in response.messages for content in message.contents):
        raise SampleError(f"the official durable agent failed a turn: {response.text or response.messages}")
    return response.text


def entity_state_bytes(client: Any, session: Any) -> int:
    durable_id = session.durable_session_id
    entity = client.get_entity(EntityInstanceId(durable_id.entity_name, durable_id.key), include_state=True)
    state = entity.get_state() if entity else None
    return len(state) if isinstance(state, str) else len(json.dumps(state))


def check_replies(rows: list[Row]) -> None:
    """Both remember: the third turn asks for the name told on the first."""
    for row in rows:
        if len(row.replies) >= 3 and "Alice" not in row.replies[2]:
            raise SampleError(f"{row.label}: turn 3 did not recall the name: {row.replies[2]!r}")


def report(rows: list[Row], seconds: float) -> str:
    ours, fast, slow = rows
    header = [
        "Durable agent",
        "Turns",
        "ms per turn, all turns (med / p95)",
        f"First {LAST} turns, med",
        f"Last {LAST} turns, med",
        "Reads per turn (med / max)",
        "State re-read per poll at the end, bytes",
        "Conversation loaded per turn at the end, bytes",
    ]
    body = []
    for row in rows:
        count = min(LAST, len(row.totals))
        body.append(
            [
                row.label,
                str(len(row.totals)),
                cell(row.totals),
                f"{median(row.totals[:count]):.1f}",
                f"{median(row.totals[-count:]):.1f}",
                f"{median(row.reads):.0f} / {max(row.reads)}",
                f"{row.state_bytes:,}",
                f"{row.session_bytes:,}",
            ]
        )
    share = median(ours.totals) / median(fast.totals)
    last = median(ours.totals[-LAST:]) / median(fast.totals[-LAST:])
    return "\n".join(
        [
            "# Our orchestrated thread beside the official durable agent",
            "",
            f"Machine: {machine_description(PACKAGES)}.  ",
            f"Embedded scheduler over gRPC, the offline model ({OFFLINE_MODEL_NAME}) over loopback HTTP, one worker "
            f"hosting both, one process; our turns and the fast-polling official agent's alternate. The run took "
            f"{seconds:.0f} s.",
            "",
            table(header, body),
            "",
            table(
                ["Target", "Measured", "Result"],
                [
                    [
                        f"ours ≤ {TARGET}x the official agent's median (fast polling, {len(fast.totals)} turns)",
                        f"{median(ours.totals):.1f} / {median(fast.totals):.1f} ms = {ratio_cell(share)} "
                        f"(last {LAST} turns: {ratio_cell(last)})",
                        verdict(share <= TARGET),
                    ],
                    [
                        "the official agent at its default polling",
                        f"{median(slow.totals):.1f} ms median, p95 {percentile(slow.totals, 0.95):.1f}",
                        "reference",
                    ],
                ],
            ),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--turns", type=int, default=TURNS, help=f"turns of ours and of the fast-polling agent ({TURNS})"
    )
    parser.add_argument(
        "--default-turns",
        type=int,
        default=DEFAULT_POLLING_TURNS,
        help=f"turns of the official agent at its default 1 s polling ({DEFAULT_POLLING_TURNS})",
    )
    parser.add_argument("--out", type=Path, default=RESULTS.parent, help="directory for peer_durable_agent.md")
    arguments = parser.parse_args()
    if min(arguments.turns, arguments.default_turns) < 3:
        parser.error("--turns and --default-turns must be at least 3")

    async def bench() -> None:
        rows, seconds = await run(arguments.turns, arguments.default_turns)
        text = report(rows, seconds)
        arguments.out.mkdir(parents=True, exist_ok=True)
        (arguments.out / RESULTS.name).write_text(text, encoding="utf-8")
        print(f"{text}\nWrote {arguments.out / RESULTS.name}.")

    run_sample(bench())


if __name__ == "__main__":
    main()
