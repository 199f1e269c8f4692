"""The role plumbing of the four Durable Task samples: one command line, one worker loop, one waiting notice.

- `add_role_arguments(parser)` adds `--role all|worker|client` and `--timeout SECONDS` to a script's parser.
- `require_shared_scheduler(role)` stops a `--role worker` / `--role client` process that has no
  DTS_ENDPOINT to share with the other role.
- `serve_until_stopped(worker)` starts a worker, says it is ready once the scheduler answered a round trip, and
  keeps it running until SIGTERM or SIGINT (Ctrl+C), then stops it cleanly: `worker.stop()` lets a running
  activity finish and delivers its result, so stopping a worker between deployments loses no work. A second
  signal while it stops is harmless (it says so); only SIGKILL cuts the running work item short.
- `waiting_notice(script)` is the line a client prints once when it has waited a moment for a worker.
- `run_store_sample(role, register=..., demo=..., script=...)` runs a store sample as `--role all`, `worker` or
  `client`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

from durabletask.worker import TaskHubGrpcWorker

from . import open_backends
from .config import SampleError, setting
from .model import ModelBackend
from .scheduler import SchedulerBackend, SchedulerWorker

ROLES = ("all", "worker", "client")
ROLES_HELP = "all (default): scheduler, worker and client in one process; worker / client: processes on DTS_ENDPOINT"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def positive_seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_role_arguments(
    parser: argparse.ArgumentParser, *, timeout: float = 30.0, timeout_help: str = "seconds a read waits for the worker"
) -> argparse.ArgumentParser:
    """Add `--role` and `--timeout` (the client's wait for a worker, default `timeout`) to `parser`; return it."""
    parser.add_argument("--role", choices=ROLES, default="all", help=ROLES_HELP)
    timeout_help = f"{timeout_help} ({timeout:g})"
    parser.add_argument("--timeout", type=positive_seconds, default=timeout, metavar="SECONDS", help=timeout_help)
    return parser


def worker_command(script: str) -> str:
    return f"python {script} --role worker"


def waiting_notice(script: str) -> Callable[[str], None]:
    """`notice(what)` prints, e.g., `Waiting for a worker to take turn-1 (start one: python x.py --role worker) ...`."""

    def notice(what: str) -> None:
        print(f"Waiting for {what} (start one: {worker_command(script)}) ...", flush=True)

    return notice


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
    stop the worker cleanly. An unreachable scheduler is one `SampleError` line instead of a worker retrying forever.

    The signal handlers stay in place until `worker.stop()` has returned: a second Ctrl+C or SIGTERM (a supervisor
    repeating itself) during the stop would otherwise end the process while a finished activity is being delivered.
    """
    if isinstance(worker, SchedulerWorker):
        await asyncio.to_thread(worker.scheduler.check)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal() -> None:
        if stop_requested.is_set():
            print("Already stopping: running work items finish first (SIGKILL would lose them).", flush=True)
        stop_requested.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for signal_number in signals:
        loop.add_signal_handler(signal_number, on_signal)
    try:
        worker.start()
        try:
            print(ready_message, flush=True)
            await stop_requested.wait()
            print("Stopping the worker: work items already running finish first.", flush=True)
        finally:
            await asyncio.to_thread(worker.stop)
            print("Worker stopped.", flush=True)
    finally:
        for signal_number in signals:
            loop.remove_signal_handler(signal_number)


async def run_store_sample(
    role: str,
    *,
    register: Callable[[TaskHubGrpcWorker], None],
    demo: Callable[[SchedulerBackend, ModelBackend], Awaitable[None]],
    script: str,
    timeout_errors: tuple[type[Exception], ...] = (),
    worker_uses_model: bool = False,
) -> None:
    """Run a sample whose worker hosts a chat message store's orchestration (the agents run in the demo).

    `--role all`: a worker and the demo in this process; `--role worker`: only the worker, until stopped;
    `--role client`: only the demo, against the worker of another process (an error of a type in `timeout_errors`
    then says how to start one). `worker_uses_model`: the worker's activities call the model (the banner says so).
    """
    if role != "all":
        require_shared_scheduler(role)
    try:
        async with open_backends(model=role != "worker" or worker_uses_model, scheduler=True) as backends:
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
    except timeout_errors as error:
        if role != "client":
            raise
        raise SampleError(f"{error} Start one: {worker_command(script)}") from None
