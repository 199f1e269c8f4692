"""The benchmarks run every row and produce complete tables; their timings are not asserted (machines are noisy)."""

from __future__ import annotations

import csv
import gc
import importlib.util
import logging
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_DIR, ScriptRunner

TURNS, UNBOUNDED_TURNS, PREFILL, SMALL_TURNS = 6, 4, (20, 40), 2
TIMING = re.compile(r"^\d+\.\d+ / \d+\.\d+$")
RATIO = re.compile(r"^\d+\.\d\dx$")
VERDICT = re.compile(r"^(met|MISSED)$")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO_DIR / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = load("thread_store_bench")
wall_times = load("script_wall_times")
measure = load("measure")


def test_statistics_helpers() -> None:
    values = [float(value) for value in range(1, 101)]
    assert measure.percentile(values, 0.5) == 50.0
    assert measure.percentile(values, 0.95) == 95.0
    assert measure.percentile([7.0], 0.95) == 7.0
    assert [bench.window_size(turns) for turns in (1000, 5000, 100, 12, 5)] == [100, 100, 10, 1, 1]
    assert measure.ratio([1.0, 2.0, 3.0], [6.0]) == 3.0
    assert measure.ratio([], [1.0]) is None
    assert measure.cell([0.0123, 0.02], 3) == "0.012 / 0.020"


def test_turns_are_grouped_by_their_place_in_a_generation() -> None:
    result = bench.Result("k", "store", "variant", every=3)
    result.turns = [bench.Turn(1.0) for _ in range(10)]
    result.turns[4].summarized = True
    assert dict(bench.positions(result)) == {
        "first of a generation (after a continue-as-new)": [3, 6, 9],  # not turn 0: the thread's very first turn
        "middle of a generation": [1, 7],  # 4 wrote a summary: counted apart
        "last of a generation (its step continues as new)": [2, 5, 8],
    }


def test_prefill_ends_on_a_generation_boundary_of_every_durable_history() -> None:
    for count in (20, 60, 2000):
        writes = bench.prefill_writes(count)
        assert writes % 4 == 0 and count / writes <= 100, count
    messages = bench.prefill_messages(6, "s")
    assert [m.role for m in messages] == ["user", "assistant"] * 3
    assert len({m.message_id for m in messages}) == 6


@pytest.mark.timeout(90)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:matplotlib", "ignore::DeprecationWarning:pyparsing")  # the plot
def test_quick_run_produces_every_table_complete(run_script_here: ScriptRunner, tmp_path: Path) -> None:
    # In this process (its imports are done: see `load` above). The run collects garbage between prefilled turns;
    # frozen, this process's own objects are not walked by each of those full collections (~0.1 s apiece).
    logger = logging.getLogger("durabletask.samples.worker")  # the benchmark quiets it; restored after
    level = logger.level
    gc.freeze()
    try:
        process = run_script_here(
            "bench/thread_store_bench.py",
            *("--turns", str(TURNS), "--unbounded-turns", str(UNBOUNDED_TURNS)),
            *("--prefill", ",".join(map(str, PREFILL)), "--prefill-turns", str(SMALL_TURNS)),
            *("--floor-turns", str(SMALL_TURNS), "--polling-turns", str(SMALL_TURNS), "--out", str(tmp_path)),
        )
    finally:
        gc.unfreeze()
        logger.setLevel(level)
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    report = (tmp_path / f"thread_stores_{TURNS}_turns.md").read_text(encoding="utf-8")
    assert report in process.stdout
    has_redis_server = shutil.which("redis-server") is not None

    header, rows = measure.table_rows(report, "Store")
    expected = bench.variants()
    assert [(row[0], row[1]) for row in rows[: len(expected)]] == [(v.store, v.variant) for v in expected]
    for variant, row in zip(expected, rows, strict=False):
        assert len(row) == len(header), row
        if variant.needs_redis_server and not has_redis_server:
            assert all(cell == "not run: redis-server is not on PATH" for cell in row[2:]), row
            continue
        planned = TURNS if "turn" in variant.targets else UNBOUNDED_TURNS
        assert row[2] == str(planned), row
        for start in (3, 6, 9):  # turn, load, save: first window, last window, ratio
            assert TIMING.match(row[start]) and TIMING.match(row[start + 1]) and RATIO.match(row[start + 2]), row
        # Every store really kept the conversation: the last turn loaded every earlier message (2 per turn).
        assert row[12] == str(2 * (planned - 1)), row
        assert VERDICT.match(row[13]) if "turn" in variant.targets else row[13].startswith("no "), row

    # The label of a store's budget is the budget it ran with.
    assert f"budget {bench.ACTIVITY_WINDOW_BYTES:,} B" in next(
        v.variant for v in expected if v.key == "activity-window"
    )

    header, rows = measure.table_rows(report, "Store | Variant | Messages held before the timed turns")
    prefilled = bench.prefilled_variants()
    assert [row[0] for row in rows] == [variant.store for variant in prefilled]
    for variant, row in zip(prefilled, rows, strict=True):
        assert len(row) == len(header), row
        if variant.needs_redis_server and not has_redis_server:
            continue
        assert row[2] == " / ".join(map(str, PREFILL)), row  # each prefill fits every store's budget
        assert all(TIMING.match(row[i]) for i in (3, 4, 6, 7, 9, 10)) and RATIO.match(row[8]), row
        assert VERDICT.match(row[12]) if variant.target else row[12] == "the comparison", row

    header, rows = measure.table_rows(report, "Messages held")
    assert [row[0] for row in rows] == [*(str(size) for size in PREFILL), "x (largest / smallest)"]

    header, rows = measure.table_rows(report, "Orchestrated thread | Turns | Which turns")
    orchestrated = [v for v in expected if v.every]
    for variant in orchestrated:
        mine = [row for row in rows if row[0] == variant.variant]
        planned = TURNS if "turn" in variant.targets else UNBOUNDED_TURNS
        assert [row[2] for row in mine][:4] == [
            "all turns",
            "first of a generation (after a continue-as-new)",
            "middle of a generation",
            "last of a generation (its step continues as new)",
        ]
        assert int(mine[0][3]) == planned == sum(int(row[3]) for row in mine[1:4]) + 1  # + the thread's first turn
        assert all(TIMING.match(row[i]) for row in mine for i in (4, 5, 6, 7)), mine

    header, rows = measure.table_rows(report, "Round trip")
    assert [row[0] for row in rows] == [bench.FLOOR_EMPTY, bench.FLOOR_WITH_SESSION]
    assert all(row[1] == str(SMALL_TURNS) and TIMING.match(row[3]) for row in rows)
    assert rows[0][2] == "0" and int(rows[1][2].replace(",", "")) > 1000  # the orchestrated thread's real session
    header, rows = measure.table_rows(
        report, "Orchestrated thread | Scheduler and waiting ms (round trip - activity; med / p95)"
    )
    assert [row[0] for row in rows] == [v.variant for v in orchestrated]
    assert all(RATIO.match(row[2]) and RATIO.match(row[3]) and VERDICT.match(row[4]) for row in rows)

    header, rows = measure.table_rows(report, "Client polling")
    assert [row[1] for row in rows] == [str(SMALL_TURNS)] * 2

    header, rows = measure.table_rows(report, "Target")
    assert len(rows) == sum(v.target for v in prefilled if has_redis_server or not v.needs_redis_server) + sum(
        "turn" in v.targets for v in expected if has_redis_server or not v.needs_redis_server
    ) + len(orchestrated)
    assert all(VERDICT.match(row[3]) for row in rows)

    with (tmp_path / f"thread_stores_{TURNS}_turns.csv").open(encoding="utf-8") as handle:
        per_turn = list(csv.reader(handle))
    assert len(per_turn) == 1 + TURNS
    ran = [v for v in expected if has_redis_server or not v.needs_redis_server]
    assert len(per_turn[0]) == 1 + 4 * len(ran)

    plot = tmp_path / f"thread_stores_{TURNS}_turns.png"
    if importlib.util.find_spec("matplotlib"):
        assert plot.read_bytes().startswith(b"\x89PNG")
    else:
        assert not plot.exists()
        assert "No plot: matplotlib is not installed (pip install -r bench/requirements.txt)." in process.stdout


def test_a_failing_suite_run_keeps_the_failing_tests_and_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys; print('FAILED tests/test_x.py::test_y - AssertionError'); sys.exit(1)"
    monkeypatch.setattr(wall_times, "SUITE_COMMAND", [sys.executable, "-c", code])
    seconds, failed = wall_times.run_timed([], suite=True)
    assert seconds > 0 and failed is not None
    assert failed.startswith("exit 1: tests/test_x.py::test_y; full output: ")
    log = Path(failed.rsplit("full output: ", 1)[1])
    assert "FAILED tests/test_x.py::test_y - AssertionError" in log.read_text(encoding="utf-8")
    log.unlink()


def test_a_failing_sample_run_stops_with_its_last_line_and_the_output() -> None:
    code = "import sys; print('partial'); sys.stderr.write('boom\\n'); sys.exit(3)"
    with pytest.raises(SystemExit, match=r"exited 3: boom \(full output: (\S+)\)") as stopped:
        wall_times.run_timed(["-c", code])
    log = Path(re.search(r"full output: (\S+)\)", str(stopped.value)).group(1))  # type: ignore[union-attr]
    assert "partial" in log.read_text(encoding="utf-8")
    log.unlink()


def test_wall_times_write_the_results_file_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(wall_times, "SAMPLES", ["bench/measure.py"])  # a script that exits at once
    out = tmp_path / "wall.md"
    with monkeypatch.context() as unwritten:  # this run only shows the table: a floor that imports nothing will do
        unwritten.setattr(wall_times, "FLOORS", {'python -c "pass"': ["-c", "pass"]})
        unwritten.setattr(sys, "argv", ["script_wall_times.py", "--runs", "1", "--out", str(out)])
        wall_times.main()
    assert not out.exists()
    assert "| bench/measure.py |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["script_wall_times.py", "--runs", "1", "--out", str(out), "--write"])
    wall_times.main()
    _, rows = measure.table_rows(out.read_text(encoding="utf-8"), "Process (offline)")
    assert [row[0] for row in rows] == [
        *(f"`{label}`" for label in wall_times.FLOORS),
        "bench/measure.py",
    ]
    assert rows[0][3] == "1.0x" and VERDICT.match(rows[-1][4])
