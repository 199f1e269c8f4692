"""The support package: backend selection, one-line errors, and the embedded scheduler over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from sample_support import (
    RedisBackend,
    SampleError,
    SchedulerBackend,
    open_backends,
    run_sample,
    select_model,
    select_redis,
    select_scheduler,
)
from tests.conftest import REPO_DIR, ScriptRunner
from tests.local_servers import free_loopback_port


def test_offline_model_is_selected_without_configuration(offline_model: object) -> None:
    backend = select_model()
    assert backend.kind == "offline"
    assert backend.client_kwargs()["base_url"] == offline_model.base_url  # type: ignore[attr-defined]


def test_openai_key_without_model_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(SampleError, match="OPENAI_MODEL"):
        select_model()
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4o-mini")
    backend = select_model()
    assert (backend.kind, backend.client_kwargs()) == ("openai", {"model": "gpt-4o-mini"})


def test_azure_without_key_uses_an_entra_id_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    with pytest.raises(SampleError, match="AZURE_OPENAI_MODEL"):
        select_model()
    monkeypatch.setenv("AZURE_OPENAI_MODEL", "gpt-4o-mini")
    kwargs = select_model().client_kwargs()
    assert type(kwargs["credential"]).__name__ == "DefaultAzureCredential"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "key")
    assert select_model().client_kwargs()["api_key"] == "key"


def test_env_file_is_read_but_the_environment_wins(
    no_service_settings: None, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "REDIS_URL=redis://from-dotenv:6379\nDTS_ENDPOINT=http://localhost:1\nDTS_TASKHUB=from-dotenv\n"
    )
    # load_dotenv writes into os.environ: give it a copy that is thrown away after the test.
    monkeypatch.setattr(
        os, "environ", {**os.environ, "SAMPLES_ENV_FILE": str(env_file), "DTS_TASKHUB": "from-environment"}
    )
    assert select_redis().url == "redis://from-dotenv:6379"
    scheduler = select_scheduler()  # a configured endpoint: nothing is started or connected yet
    assert (scheduler.host_address, scheduler.taskhub, scheduler.embedded) == ("localhost:1", "from-environment", None)


def test_fakeredis_clients_of_one_backend_share_data(no_service_settings: None) -> None:
    async def scenario() -> list[str]:
        backend = select_redis()
        first, second = backend.new_client(), backend.new_client()
        await first.rpush("k", "a", "b")
        values = await second.lrange("k", 0, -1)
        await first.aclose()
        await second.aclose()
        return values

    assert asyncio.run(scenario()) == ["a", "b"]


def test_real_redis_is_used_and_reachable(redis_server_url: str) -> None:
    async def scenario() -> str | None:
        backend = RedisBackend(redis_server_url)
        await backend.check()
        client = backend.new_client()
        await client.set("support-test", "real")
        value = await client.get("support-test")
        await client.delete("support-test")
        await client.aclose()
        return value

    assert asyncio.run(scenario()) == "real"


def test_unreachable_redis_is_one_line_naming_redis_url(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{free_loopback_port()}/0")

    async def main() -> None:
        async with open_backends(redis=True):
            raise AssertionError("should not get here")

    with pytest.raises(SystemExit) as exit_info:
        run_sample(main())
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("error: cannot reach Redis at REDIS_URL=redis://:***@127.0.0.1:")
    assert "secret" not in error and "redis-server" in error


def test_unreachable_scheduler_is_one_line_naming_dts_endpoint(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DTS_ENDPOINT", f"http://localhost:{free_loopback_port()}")

    async def main() -> None:
        async with open_backends(scheduler=True):
            raise AssertionError("should not get here")

    with pytest.raises(SystemExit):
        run_sample(main())
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("error: cannot reach the Durable Task Scheduler at DTS_ENDPOINT=localhost:")


def test_banner_names_all_three_backends(no_service_settings: None, capsys) -> None:
    async def main() -> None:
        async with open_backends(redis=True, scheduler=True) as backends:
            assert backends.scheduler is not None and backends.scheduler.embedded is not None

    run_sample(main())
    banner = capsys.readouterr().out.strip()
    assert banner.startswith("Backends: model=offline model at http://127.0.0.1:")
    assert "| redis=fakeredis (in-process) |" in banner
    assert "scheduler=embedded Durable Task scheduler at 127.0.0.1:" in banner


@pytest.mark.timeout(60)
def test_orchestration_round_trip_with_the_worker_in_another_process(
    scheduler: SchedulerBackend, scheduler_endpoint: str
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.echo_worker"],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "worker ready"
        client = scheduler.client()
        instance_id = client.schedule_new_orchestration("echo_orchestrator", instance_id=f"echo-{time.time_ns()}")
        client.raise_orchestration_event(instance_id, "say", data="hello from the test")
        state = client.wait_for_orchestration_completion(instance_id, timeout=30)
        assert state is not None and state.runtime_status.name == "COMPLETED"
        output = json.loads(state.serialized_output or "null")
        assert output == {"text": "HELLO FROM THE TEST", "worker_pid": worker.pid}
        assert json.loads(state.serialized_custom_status or "null") == output
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "Traceback" not in stderr and "CANCELLED" not in stderr, stderr


@pytest.mark.timeout(30)
def test_embedded_scheduler_runs_as_its_own_process(run_script: ScriptRunner) -> None:
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sample_support.serve_scheduler", "--port", str(port)],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"Embedded Durable Task scheduler listening on 127.0.0.1:{port}."
        backend = SchedulerBackend(f"127.0.0.1:{port}", "default", secure_channel=False)
        backend.check()
        client = backend.client()
        assert client.get_orchestration_state("no-such-instance") is None
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert (process.returncode, stderr) == (0, "")
