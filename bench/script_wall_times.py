"""Whole-process wall time of every sample (offline), beside the framework's own import floor, and of the test suite.

    python bench/script_wall_times.py                    # samples and the import floor, printed only
    python bench/script_wall_times.py --suite-runs 3     # and three runs of the test suite (as `make test` runs it)
    python bench/script_wall_times.py --write            # also write bench/results/script_wall_times.md

Each sample runs as a reader runs it, `python <script>.py` from the repository folder, with the settings that select
real services removed from the environment and `.env` ignored; samples and the floor (`python -c "import
agent_framework"`) take turns, run by run, so both see the same machine load. Targets (from the benchmark issue):
each script's median under 3 s, the test suite under 90 s on 2 cores. A run that fails stops with the command, its
failing tests (for the suite) and the path of its full output.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
from bench.measure import machine_description, table, verdict  # noqa: E402
from sample_support.config import MODEL_SETTINGS, SERVICE_SETTINGS  # noqa: E402

RESULTS = REPO_DIR / "bench" / "results" / "script_wall_times.md"
SAMPLES = [
    "custom_chat_message_store_thread.py",
    "suspend_resume_thread.py",
    "redis_chat_message_store_thread.py",
    "durable_task_orchestrated_thread.py",
    "durable_task_chat_message_store.py",
    "durable_task_activity_chat_message_store.py",
    "durable_task_multi_agent_thread.py",
]
FLOORS = {  # the framework's own import floor, and the import every sample's agent needs (its OpenAI client)
    'python -c "import agent_framework"': ["-c", "import agent_framework"],
    'python -c "from agent_framework.openai import OpenAIChatCompletionClient"': [
        "-c",
        "from agent_framework.openai import OpenAIChatCompletionClient",
    ],
}
RUNS = 5
SCRIPT_TARGET_SECONDS = 3.0
SUITE_TARGET_SECONDS = 90.0
SUITE_COMMAND = ["make", "--no-print-directory", "test"]  # the README's command, exactly as it runs the tests


class TimingRunFailed(SystemExit):
    pass


@dataclass
class Timed:
    label: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def offline_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name not in MODEL_SETTINGS + SERVICE_SETTINGS}
    return {**environment, "SAMPLES_ENV_FILE": ""}


def failing_tests(output: str) -> list[str]:
    """`FAILED tests/...` / `ERROR tests/...` lines of pytest's short summary."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)


def run_timed(arguments: list[str], *, suite: bool = False) -> tuple[float, str | None]:
    """Seconds `python <arguments>` took (the suite: `SUITE_COMMAND`), and for the suite what failed (None if it
    passed). A failing sample stops the run."""
    command = SUITE_COMMAND if suite else [sys.executable, *arguments]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_DIR, env=offline_environment(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if process.returncode == 0:
        return elapsed, None
    output = f"$ {' '.join(command)}\n--- stdout\n{process.stdout}\n--- stderr\n{process.stderr}"
    with tempfile.NamedTemporaryFile("w", prefix="wall-time-", suffix=".log", delete=False, encoding="utf-8") as log:
        log.write(output)
    failed = failing_tests(process.stdout)
    if suite:
        names = ", ".join(failed) if failed else "no test named (see the log)"
        return elapsed, f"exit {process.returncode}: {names}; full output: {log.name}"
    last = (process.stderr.strip().splitlines() or process.stdout.strip().splitlines() or ["no output"])[-1]
    raise TimingRunFailed(
        f"error: `{' '.join(arguments)}` exited {process.returncode}: {last} (full output: {log.name})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each sample and floor (default {RUNS})")
    parser.add_argument("--suite-runs", type=int, default=0, help="consecutive runs of the test suite (default 0)")
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.relative_to(REPO_DIR)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the file --write writes")
    arguments = parser.parse_args()
    if arguments.runs < 1 or arguments.suite_runs < 0:
        parser.error("--runs must be at least 1 and --suite-runs at least 0")
    samples = [Timed(sample) for sample in SAMPLES if (REPO_DIR / sample).is_file()]
    floors = [Timed(label) for label in FLOORS]
    started = time.perf_counter()
    for number in range(arguments.runs):  # each run: the floors, then every sample
        for floor in floors:
            floor.times.append(run_timed(FLOORS[floor.label])[0])
        for sample in samples:
            sample.times.append(run_timed([sample.label])[0])
        print(f"run {number + 1} of {arguments.runs} done", flush=True)
    floor = floors[0].median
    rows = [
        [
            f"`{t.label}`",
            f"{t.median:.2f}",
            f"{min(t.times):.2f} / {max(t.times):.2f}",
            f"{t.median / floor:.1f}x",
            "floor",
        ]
        for t in floors
    ]
    rows += [
        [
            sample.label,
            f"{sample.median:.2f}",
            f"{min(sample.times):.2f} / {max(sample.times):.2f}",
            f"{sample.median / floor:.1f}x",
            verdict(sample.median < SCRIPT_TARGET_SECONDS),
        ]
        for sample in samples
    ]
    header = [
        "Process (offline)",
        f"Median of {arguments.runs} runs, s",
        "Min / max, s",
        "x the framework's import floor",
        f"Target < {SCRIPT_TARGET_SECONDS:g} s",
    ]
    parts = [
        "# Wall time of each sample as a process",
        "",
        f"Machine: {machine_description()}.  ",
        f"Each sample and each floor run {arguments.runs} times, taking turns; the first floor row is the framework's "
        "import floor. Whole process: interpreter start, imports, the offline model, the embedded scheduler and "
        "Redis where the sample uses them, the demo itself.",
        "",
        table(header, rows),
        "",
    ]
    if arguments.suite_runs:
        command = " ".join(SUITE_COMMAND[:1] + SUITE_COMMAND[2:])
        suite_rows = []
        for number in range(arguments.suite_runs):
            seconds, failed = run_timed([], suite=True)
            outcome = "passed" if failed is None else f"FAILED ({failed})"
            suite_rows.append([str(number + 1), f"{seconds:.1f}", outcome, verdict(seconds < SUITE_TARGET_SECONDS)])
            print(f"suite run {number + 1}: {seconds:.1f} s, {outcome}", flush=True)
        parts += [
            f"## The test suite: `{command}`, {arguments.suite_runs} consecutive runs",
            "",
            table(["Run", "Wall time, s", "Outcome", f"Target < {SUITE_TARGET_SECONDS:g} s"], suite_rows),
            "",
        ]
    parts.append(f"The measurement took {time.perf_counter() - started:.0f} s.")
    text = "\n".join(parts) + "\n"
    print(f"\n{text}")
    if arguments.write:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(text, encoding="utf-8")
        print(f"Wrote {arguments.out}.")


if __name__ == "__main__":
    main()
