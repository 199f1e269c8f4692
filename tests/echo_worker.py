"""A worker process for test_sample_support: serves `echo_orchestrator` on DTS_ENDPOINT until SIGTERM.

It runs the way the samples' `--role worker` does (`run_sample` + `serve_until_stopped`), so an unreachable
scheduler is one error line and exit status 1, and "worker ready" comes only once the scheduler answered.
"""

from __future__ import annotations

import os

from durabletask import task

from sample_support import run_sample, select_scheduler
from sample_support.durable_worker import serve_until_stopped


def shout(_: task.ActivityContext, text: str) -> dict[str, object]:
    return {"text": text.upper(), "worker_pid": os.getpid()}


def echo_orchestrator(ctx: task.OrchestrationContext, _: None) -> object:
    text = yield ctx.wait_for_external_event("say")
    result = yield ctx.call_activity(shout, input=text)
    ctx.set_custom_status(result)
    return result


async def serve() -> None:
    scheduler = select_scheduler()
    try:
        worker = scheduler.worker()
        worker.add_orchestrator(echo_orchestrator)
        worker.add_activity(shout)
        await serve_until_stopped(worker, ready_message="worker ready")
    finally:
        scheduler.stop()


if __name__ == "__main__":
    run_sample(serve())
