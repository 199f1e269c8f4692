"""Plumbing shared by the thread samples: settings, backend selection, the offline model, embedded servers.

A sample opens its backends with `open_backends(...)`, which prints one banner line naming the
model, Redis and scheduler in use, and runs its `main()` through `run_sample(...)`.

Redis (fakeredis, redis) and the scheduler (durabletask, grpc) are imported only by a sample that uses them:
`RedisBackend`, `select_redis`, `SchedulerBackend` and `select_scheduler` load their module on first use.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import SampleError, load_settings, quiet_azure_logging, run_sample, setting
from .model import ModelBackend, select_model

if TYPE_CHECKING:
    from .redis_backend import RedisBackend, select_redis
    from .scheduler import SchedulerBackend, select_scheduler

__all__ = [
    "Backends",
    "ModelBackend",
    "RedisBackend",
    "SampleError",
    "SchedulerBackend",
    "load_settings",
    "open_backends",
    "run_sample",
    "select_model",
    "select_redis",
    "select_scheduler",
    "setting",
]

_LAZY = {
    "RedisBackend": ".redis_backend",
    "select_redis": ".redis_backend",
    "SchedulerBackend": ".scheduler",
    "select_scheduler": ".scheduler",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


@dataclass
class Backends:
    """The model, Redis and scheduler one sample run uses (`None` where the sample needs none)."""

    selected_model: ModelBackend | None = None
    redis: RedisBackend | None = None
    scheduler: SchedulerBackend | None = None

    @property
    def model(self) -> ModelBackend:
        if self.selected_model is None:
            raise RuntimeError("this process opened its backends with model=False")
        return self.selected_model

    def banner(self) -> str:
        model = self.selected_model.description if self.selected_model else "not used in this process"
        redis = self.redis.description if self.redis else "not used"
        scheduler = self.scheduler.description if self.scheduler else "not used"
        return f"Backends: model={model} | redis={redis} | scheduler={scheduler}"


@asynccontextmanager
async def open_backends(*, model: bool = True, redis: bool = False, scheduler: bool = False) -> AsyncIterator[Backends]:
    """Select (and check) the backends a sample needs, print the banner, stop embedded servers on exit.

    `model=False` is for a process that never calls the model itself (e.g. a Durable Task client whose
    worker runs the agent). A configured Redis or scheduler that cannot be used is one `SampleError` line."""
    quiet_azure_logging()
    backends = Backends(selected_model=select_model() if model else None)
    if redis:
        from .redis_backend import select_redis

        backends.redis = select_redis()
        await backends.redis.check()
    try:
        if scheduler:
            from .scheduler import select_scheduler

            backends.scheduler = select_scheduler()
            if backends.scheduler.embedded is None:
                await asyncio.to_thread(backends.scheduler.check)
        print(backends.banner(), flush=True)
        yield backends
    finally:
        if backends.scheduler:
            backends.scheduler.stop()
