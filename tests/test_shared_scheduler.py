"""All four durable samples' workers on one scheduler process, the way a reader following the README runs them.

One `python -m sample_support.serve_scheduler` process; the `--role worker` processes of every durable sample
running at once against it (started and stopped together); then each sample's `--role client`, run in this process
(`run_script_inline`: what the test is about is where the workers run, not the clients). A worker receives only the
orchestrations and activities it registered (work item filters), so no sample's orchestration is failed by another
sample's worker ("orchestrator was not registered"). The model is this test process's offline model.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from durabletask.client import OrchestrationQuery, OrchestrationStatus

from sample_support import SchedulerBackend
from sample_support.offline_model import OFFLINE_MODEL_NAME, OfflineModelServer
from tests.conftest import REPO_DIR, run_script_inline, start_worker_process, stop_worker_process, unique
from tests.local_servers import start_child, stop_child

DURABLE_SAMPLES = (
    "durable_task_orchestrated_thread.py",
    "durable_task_chat_message_store.py",
    "durable_task_activity_chat_message_store.py",
    "durable_task_multi_agent_thread.py",
)


@pytest.fixture
def scheduler_process(monkeypatch: pytest.MonkeyPatch, offline_model: OfflineModelServer) -> Iterator[SchedulerBackend]:
    """`python -m sample_support.serve_scheduler --port 0`; DTS_ENDPOINT and the OPENAI_* settings of the worker and
    client processes point at it and at this process's offline model."""
    process = start_child(
        [sys.executable, "-m", "sample_support.serve_scheduler", "--port", "0"],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Embedded Durable Task scheduler listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1].rstrip("."))
        monkeypatch.setenv("DTS_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("DTS_TASKHUB", "default")
        monkeypatch.setenv("OPENAI_API_KEY", "offline")
        monkeypatch.setenv("OPENAI_MODEL", OFFLINE_MODEL_NAME)
        monkeypatch.setenv("OPENAI_BASE_URL", offline_model.base_url)
        yield SchedulerBackend(f"127.0.0.1:{port}", "default", secure_channel=False)
    finally:
        stop_child(process)


def client_arguments(script: str) -> list[str]:
    if script == "durable_task_orchestrated_thread.py":
        return ["--thread", unique("shared"), "--say", "My name is Alice.", "--say", "What is my name?"]
    return []


@pytest.mark.timeout(300)
def test_every_durable_samples_worker_shares_one_scheduler(scheduler_process: SchedulerBackend) -> None:
    assert scheduler_process.is_embedded  # the README's scheduler, reached through DTS_ENDPOINT
    with ThreadPoolExecutor(len(DURABLE_SAMPLES)) as pool:
        starting: list[Future[subprocess.Popen[str]]] = [
            pool.submit(start_worker_process, script) for script in DURABLE_SAMPLES
        ]
        try:
            workers = [each.result() for each in starting]  # all four run at once from here on
            for script in DURABLE_SAMPLES:
                result = run_script_inline(script, "--role", "client", *client_arguments(script))
                assert result.returncode == 0, f"{script} --role client:\n{result.stdout}\n{result.stderr}"
                assert "Traceback" not in result.stderr, result.stderr
                assert "Your name is Alice." in result.stdout  # recalled: each sample's history was kept
            list(pool.map(stop_worker_process, workers))  # SIGTERM to all at once: each exits 0, no traceback
        finally:
            for each in starting:
                if each.exception() is None:
                    stop_child(each.result())

    client = scheduler_process.client()
    try:
        every = client.get_all_orchestration_states(OrchestrationQuery())
        failed = client.get_all_orchestration_states(OrchestrationQuery(runtime_status=[OrchestrationStatus.FAILED]))
    finally:
        client.close()
    assert len(every) >= len(DURABLE_SAMPLES)  # the samples really kept their threads on this scheduler
    assert [(state.instance_id, state.name, state.failure_details) for state in failed] == []
