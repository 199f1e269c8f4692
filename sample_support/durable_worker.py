"""Plumbing for the Durable Task samples: run a worker until it is told to stop, wait on custom status.

- `require_shared_scheduler(role)` stops a `--role worker` / `--role client` process that has no
  DTS_ENDPOINT to share with the other role.
- `run_store_sample(role, register=..., demo=...)` runs a store sample as `--role all`, `worker` or `client`.
- `serve_until_stopped(worker)` starts a worker, says it is ready once the scheduler answered a round trip, and
  keeps it running until SIGTERM or SIGINT (Ctrl+C), then stops it cleanly: `worker.stop()` lets a running
  activity finish and delivers its result, so stopping a worker between deployments loses no work.
- `wait_for_custom_status(client, instance_id, done)` polls an orchestration's custom status until
  `done(status)` holds, with a timeout that ends in a one-line `SampleError` instead of a hang.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from . import open_backends
from .config import SampleError, setting
from .model import ModelBackend
from .scheduler import SchedulerBackend, SchedulerWorker

ENDED = (OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED)


class StatusTimeout(SampleError):
    """The custom status did not reach the awaited state in time (the orchestration may still get there)."""


def require_shared_scheduler(role: str) -> None:
    """`--role worker` and `--role client` run in separate processes, so they need a scheduler both can reach."""
    if not setting("DTS_ENDPOINT"):
        raise SampleError(
            f"--role {role} needs DTS_ENDPOINT (an embedded scheduler would live only in this process): run "
            "`python -m sample_support.serve_scheduler --port 8080` and `export DTS_ENDPOINT=http://localhost:8080`"
        )


async def serve_until_stopped(
    worker: TaskHubGrpcWorker, *, ready_message: str = "Worker ready; Ctrl+C (or SIGTERM) stops it cleanly."
) -> None:
    """Start `worker`, print `ready_message` once the scheduler has answered, and run until SIGTERM or SIGINT; then
    stop the worker cleanly. An unreachable scheduler is one `SampleError` line instead of a worker retrying forever."""
    if isinstance(worker, SchedulerWorker):
        await asyncio.to_thread(worker.scheduler.check)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signal_number in signals:
        loop.add_signal_handler(signal_number, stop_requested.set)
    worker.start()
    try:
        print(ready_message, flush=True)
        await stop_requested.wait()
        print("Stopping the worker: work items already running finish first.", flush=True)
    finally:
        for signal_number in signals:
            loop.remove_signal_handler(signal_number)
        await asyncio.to_thread(worker.stop)
        print("Worker stopped.", flush=True)


async def run_store_sample(
    role: str,
    *,
    register: Callable[[TaskHubGrpcWorker], None],
    demo: Callable[[SchedulerBackend, ModelBackend], Awaitable[None]],
) -> None:
    """Run a sample whose worker hosts only a chat message store's orchestration (the agents run in the demo).

    `--role all`: a worker and the demo in this process; `--role worker`: only the worker, until stopped;
    `--role client`: only the demo, against the worker of another process. The worker never calls the model.
    """
    if role != "all":
        require_shared_scheduler(role)
    async with open_backends(model=role != "worker", scheduler=True) as backends:
        assert backends.scheduler is not None
        if role == "client":
            await demo(backends.scheduler, backends.model)
            return
        worker = backends.scheduler.worker()
        register(worker)
        if role == "worker":
            await serve_until_stopped(worker)
            return
        worker.start()
        try:
            await demo(backends.scheduler, backends.model)
        finally:
            await asyncio.to_thread(worker.stop)


async def wait_for_custom_status(
    client: TaskHubGrpcClient,
    instance_id: str,
    done: Callable[[Any], bool],
    *,
    timeout: float,
    hint: str = "",
    poll_interval: float = 0.05,
) -> Any:
    """Poll the custom status of `instance_id` until `done(status)` is true, and return that status.

    `done` also sees `None`: the status reads `None` until the orchestration first sets it, and again for a
    moment after each continue-as-new. Raises `StatusTimeout` after `timeout` seconds (with `hint` appended)
    and `SampleError` at once if the orchestration has ended or does not exist.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = await asyncio.to_thread(client.get_orchestration_state, instance_id)
        if state is None:
            raise SampleError(f"there is no orchestration {instance_id!r}")
        status = state.get_custom_status()
        if done(status):
            return status
        if state.runtime_status in ENDED:
            failure = f": {state.failure_details.message}" if state.failure_details else ""
            raise SampleError(f"orchestration {instance_id!r} has ended ({state.runtime_status}){failure}")
        if time.monotonic() >= deadline:
            raise StatusTimeout(f"orchestration {instance_id!r} did not report in {timeout:g} s{hint}")
        await asyncio.sleep(poll_interval)
