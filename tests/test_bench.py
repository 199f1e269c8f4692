"""The benchmark runs every store and produces a complete table; its timings are not asserted (machines are noisy)."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_DIR, ScriptRunner

TURNS, UNBOUNDED_TURNS = 12, 6
TIMING = re.compile(r"^\d+\.\d / \d+\.\d$")
RATIO = re.compile(r"^\d+\.\d\dx$")


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("thread_store_bench", REPO_DIR / "bench" / "thread_store_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def table_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    lines = text[text.index(f"| {first_header} |") :].splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[0], table[2:]


def test_statistics_helpers() -> None:
    values = [float(value) for value in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.95) == 95.0
    assert bench.percentile([7.0], 0.95) == 7.0
    assert [bench.window_size(turns) for turns in (1000, 5000, 100, 12, 5)] == [100, 100, 10, 1, 1]
    assert bench.ratio([1.0, 2.0, 3.0], [6.0]) == 3.0
    assert bench.ratio([], [1.0]) is None


@pytest.mark.timeout(60)
def test_quick_run_produces_a_complete_table(run_script: ScriptRunner, tmp_path: Path) -> None:
    process = run_script(
        "bench/thread_store_bench.py",
        "--turns",
        str(TURNS),
        "--unbounded-turns",
        str(UNBOUNDED_TURNS),
        "--out",
        str(tmp_path),
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    report = (tmp_path / f"thread_stores_{TURNS}_turns.md").read_text(encoding="utf-8")
    assert report in process.stdout

    header, rows = table_rows(report, "Store")
    expected = bench.variants()
    assert [(row[0], row[1]) for row in rows] == [(variant.store, variant.variant) for variant in expected]
    has_redis_server = shutil.which("redis-server") is not None
    for variant, row in zip(expected, rows, strict=True):
        assert len(row) == len(header), row
        if variant.needs_redis_server and not has_redis_server:
            assert all(cell == "not run: redis-server is not on PATH" for cell in row[2:]), row
            continue
        planned = TURNS if "turn" in variant.targets else UNBOUNDED_TURNS
        assert row[2] == str(planned), row
        for start in (3, 6, 9):  # turn, load, save: first window, last window, ratio
            assert TIMING.match(row[start]) and TIMING.match(row[start + 1]) and RATIO.match(row[start + 2]), row
        # The stores really kept the conversation: the last turn loaded every earlier message (2 per turn).
        assert row[12] == str(2 * (planned - 1)), row
        assert re.fullmatch(r"baseline \(no target\)|((save|turn) flat: (met|MISSED)(; )?)+", row[13]), row

    header, round_trips = table_rows(report, "Orchestrated thread")
    assert len(round_trips) == len(bench.ROUND_TRIP_ROWS)
    for row in round_trips:
        assert len(row) == len(header)
        assert all(TIMING.match(row[index]) for index in (2, 3, 5, 6)), row
        # Continue-as-new every 3 turns: turns 4, 7 and 10 of 12 follow one; the no-continue-as-new row has none.
        assert TIMING.match(row[4]) if "no continue-as-new" not in row[0] else row[4].startswith("n/a"), row
        assert row[8] in ("met", "MISSED")

    with (tmp_path / f"thread_stores_{TURNS}_turns.csv").open(encoding="utf-8") as handle:
        per_turn = list(csv.reader(handle))
    assert len(per_turn) == 1 + TURNS
    assert len(per_turn[0]) == 1 + 3 * sum(1 for row in rows if not row[2].startswith("not run"))

    plot = tmp_path / f"thread_stores_{TURNS}_turns.png"
    if importlib.util.find_spec("matplotlib"):
        assert plot.read_bytes().startswith(b"\x89PNG")
    else:
        assert not plot.exists()
        assert "No plot: matplotlib is not installed (pip install -r bench/requirements.txt)." in process.stdout
