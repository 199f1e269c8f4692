"""Whole-process wall time of every sample (offline, median of 5 runs) and of the whole test suite (one run).

    python bench/script_wall_times.py            # samples and test suite
    python bench/script_wall_times.py --no-suite # samples only

Each sample runs as a reader runs it, `python <script>.py` from the repository folder, with the settings that select
real services removed from the environment and `.env` ignored. Targets (from the benchmark issue): each script under
3 s, the test suite under 90 s on 2 cores. The table goes to stdout and `bench/results/script_wall_times.md`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
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
RUNS = 5
SCRIPT_TARGET_SECONDS = 3.0
SUITE_TARGET_SECONDS = 90.0


def offline_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name not in MODEL_SETTINGS + SERVICE_SETTINGS}
    return {**environment, "SAMPLES_ENV_FILE": ""}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_DIR, env=offline_environment(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        last_line = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: `{' '.join(command[1:])}` exited {process.returncode}: {last_line}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-suite", action="store_true", help="skip the test suite run")
    arguments = parser.parse_args()
    lines = [
        f"| Sample (offline, `python <script>`) | Median of {RUNS} runs, s | Min / max, s | Target < 3 s |",
        "|---|---|---|---|",
    ]
    for sample in SAMPLES:
        if not (REPO_DIR / sample).is_file():
            lines.append(f"| {sample} | not run: the script does not exist | | |")
            continue
        times = [wall_time([sys.executable, sample]) for _ in range(RUNS)]
        median = statistics.median(times)
        met = "met" if median < SCRIPT_TARGET_SECONDS else "MISSED"
        lines.append(f"| {sample} | {median:.2f} | {min(times):.2f} / {max(times):.2f} | {met} |")
        print(lines[-1], flush=True)
    if not arguments.no_suite:
        suite = wall_time([sys.executable, "-m", "pytest"])
        met = "met" if suite < SUITE_TARGET_SECONDS else "MISSED"
        lines += ["", f"Whole test suite (`python -m pytest`, one run): {suite:.1f} s, target < 90 s: {met}."]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(f"\n{text}Wrote {RESULTS}.")


if __name__ == "__main__":
    main()
