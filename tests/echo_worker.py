"""A worker process for test_sample_support: serves `echo_orchestrator` on DTS_ENDPOINT until SIGTERM."""

from __future__ import annotations

import os
import signal
import threading

from durabletask import task

from sample_support import select_scheduler


def shout(_: task.ActivityContext, text: str) -> dict[str, object]:
    return {"text": text.upper(), "worker_pid": os.getpid()}


def echo_orchestrator(ctx: task.OrchestrationContext, _: None) -> object:
    text = yield ctx.wait_for_external_event("say")
    result = yield ctx.call_activity(shout, input=text)
    ctx.set_custom_status(result)
    return result


def main() -> None:
    scheduler = select_scheduler()
    worker = scheduler.worker()
    worker.add_orchestrator(echo_orchestrator)
    worker.add_activity(shout)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    worker.start()
    print("worker ready", flush=True)
    stopped.wait()
    worker.stop()


if __name__ == "__main__":
    main()
