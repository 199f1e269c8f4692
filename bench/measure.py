"""What every benchmark script here shares: percentiles, table cells, markdown tables and the machine description."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

PACKAGES = ["agent-framework-core", "agent-framework-openai", "agent-framework-redis", "durabletask", "redis"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.5 = median, 0.95 = p95)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def cell(values: Sequence[float], decimals: int = 1) -> str:
    """`median / p95` (milliseconds), one decimal unless told; "n/a" for no values."""
    if not values:
        return "n/a"
    return f"{percentile(values, 0.5):.{decimals}f} / {percentile(values, 0.95):.{decimals}f}"


def ratio(early: Sequence[float], late: Sequence[float]) -> float | None:
    """Median of `late` / median of `early`; None if either is empty."""
    if not early or not late:
        return None
    return percentile(late, 0.5) / percentile(early, 0.5)


def ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the markdown table in `text` whose first column is `first_header`."""
    lines = text[text.index(f"| {first_header} |") :].splitlines()
    found = []
    for line in lines:
        if not line.startswith("|"):
            break
        found.append([part.strip() for part in line.strip().strip("|").split("|")])
    return found[0], found[2:]


def machine_description(packages: Sequence[str] = PACKAGES) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    load = ""
    with contextlib.suppress(OSError):
        load = f", load average {os.getloadavg()[0]:.1f} at the end"
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs{load}, "
        f"Python {platform.python_version()}; {versions}"
    )
