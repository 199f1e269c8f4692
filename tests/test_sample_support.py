"""The support package: backend selection, one-line errors, and the embedded scheduler over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from durabletask import task
from durabletask.testing import InMemoryOrchestrationBackend

from sample_support import (
    ModelBackend,
    RedisBackend,
    SampleError,
    SchedulerBackend,
    open_backends,
    run_sample,
    select_model,
    select_redis,
    select_scheduler,
    serve_scheduler,
)
from sample_support.config import error_line, masked_url
from tests.conftest import REPO_DIR, run_script_inline, unique
from tests.local_servers import free_loopback_port, local_redis_server, run_child, start_child, stop_child

AZURE_SETTINGS = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME", "AZURE_PASSWORD")


def run_python(
    code: str, *, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -c code` from the repository folder, in a child that dies with the tests."""
    return run_child(
        [sys.executable, "-c", textwrap.dedent(code)],
        timeout=timeout,
        cwd=REPO_DIR,
        env={**os.environ, **(env or {})},
        text=True,
    )


def run_sample_error(main: Any, capsys: pytest.CaptureFixture[str], **kwargs: Any) -> str:
    """Runs `run_sample(main)`, expects exit status 1 and returns the single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        run_sample(main, **kwargs)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: "), error
    return error.removeprefix("error: ").strip()


@pytest.fixture
def no_azure_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No service principal in the environment and no CLI login (an empty Azure CLI configuration folder)."""
    for name in AZURE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-cli"))
    monkeypatch.setenv("IDENTITY_ENDPOINT", "")
    monkeypatch.setenv("MSI_ENDPOINT", "")


# region model selection


def test_offline_model_is_selected_without_configuration(offline_model: object) -> None:
    backend = select_model()
    assert backend.kind == "offline"
    client = backend.client_kwargs()["async_client"]
    assert str(client.base_url).rstrip("/") == offline_model.base_url.rstrip("/")  # type: ignore[attr-defined]


def test_openai_key_without_model_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(SampleError, match="OPENAI_MODEL"):
        select_model()
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4o-mini")
    backend = select_model()
    kwargs = backend.client_kwargs()
    assert (backend.kind, kwargs["model"], kwargs["async_client"].api_key) == ("openai", "gpt-4o-mini", "sk-test")


def test_every_client_gets_the_request_timeout_and_no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    client = select_model().client_kwargs()["async_client"]
    assert (client.timeout, client.max_retries) == (60.0, 0)
    monkeypatch.setenv("OPENAI_TIMEOUT_SECONDS", "2.5")
    assert select_model().client_kwargs()["async_client"].timeout == 2.5
    # Two calls, two clients: each sample closes its own with `await chat_client.client.close()`.
    backend = select_model()
    assert backend.client_kwargs()["async_client"] is not backend.client_kwargs()["async_client"]
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("OPENAI_TIMEOUT_SECONDS", bad)
        with pytest.raises(SampleError, match=f"OPENAI_TIMEOUT_SECONDS={bad} is not a positive number"):
            select_model()


def test_azure_with_a_key_uses_the_openai_compatible_v1_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com/")
    with pytest.raises(SampleError, match="AZURE_OPENAI_MODEL"):
        select_model()
    monkeypatch.setenv("AZURE_OPENAI_MODEL", "gpt-4o-mini")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "key")
    backend = select_model()
    client = backend.client_kwargs()["async_client"]
    assert (backend.kind, client.api_key, str(client.base_url)) == (
        "azure",
        "key",
        "https://example.openai.azure.com/openai/v1/",
    )


def test_azure_without_key_or_login_is_one_line_at_start(
    monkeypatch: pytest.MonkeyPatch, no_azure_login: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_MODEL", "gpt-4o-mini")

    async def main() -> None:
        async with open_backends():
            raise AssertionError("should not get here")

    line = run_sample_error(main(), capsys)
    assert line.startswith("Azure sign-in failed for AZURE_OPENAI_ENDPOINT (DefaultAzureCredential failed")
    assert "az login" in line and "AZURE_OPENAI_API_KEY" in line


# endregion

# region run_sample


class StoreRecordError(ValueError):
    """A store's own exception type, as a copyable store class raises it."""


def test_errors_listed_by_the_sample_are_one_line_and_others_keep_their_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def corrupt() -> None:
        raise StoreRecordError("session 's1': record 3 is not valid JSON\n(line 1 column 5)")

    assert run_sample_error(corrupt(), capsys, errors=(StoreRecordError,)) == (
        "session 's1': record 3 is not valid JSON (line 1 column 5)"
    )

    if sys.version_info >= (3, 11):  # asyncio.TaskGroup wraps what its tasks raise in an ExceptionGroup

        async def grouped() -> None:
            async with asyncio.TaskGroup() as group:
                group.create_task(corrupt())

        assert run_sample_error(grouped(), capsys, errors=(StoreRecordError,)).startswith("session 's1'")
    with pytest.raises(StoreRecordError):  # not listed: a bug in the sample, traceback kept
        run_sample(corrupt())


def test_a_closed_stdout_ends_the_run_quietly() -> None:
    code = """
        from sample_support import run_sample

        async def main() -> None:
            for number in range(200_000):
                print(f"line {number}")

        run_sample(main())
    """
    process = start_child(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert [process.stdout.readline(), process.stdout.readline()] == [b"line 0\n", b"line 1\n"]  # | head -2
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    finally:
        stop_child(process)
    assert (process.returncode, stderr) == (1, "")


@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_run_the_samples_cleanup(tmp_path: Path, signal_number: int, status: int) -> None:
    code = f"""
        import asyncio, shutil, tempfile
        from sample_support import run_sample

        async def main() -> None:
            scratch = tempfile.mkdtemp(dir={str(tmp_path)!r})
            try:
                print("working in", scratch, flush=True)
                await asyncio.sleep(60)
            finally:
                shutil.rmtree(scratch)
                print("cleaned up", flush=True)

        run_sample(main())
    """
    process = start_child(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("working in")
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        stop_child(process)
    assert (process.returncode, stdout, stderr) == (status, "cleaned up\n", "")
    assert list(tmp_path.iterdir()) == []


class FailingModelService:
    """An OpenAI-compatible endpoint answering every request with one HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def model_failure_line(base_url: str) -> str:
    """What `run_sample` prints when one chat request to `base_url` (OpenAI, key "sk-test") fails."""
    from agent_framework.openai import OpenAIChatCompletionClient

    backend = ModelBackend("openai", "test", {"model": "gpt-4o-mini", "api_key": "sk-test", "base_url": base_url})

    async def ask() -> BaseException:
        client = OpenAIChatCompletionClient(**backend.client_kwargs())
        try:
            await client.get_response("Hello")
        except Exception as error:
            return error
        finally:
            await client.client.close()
        raise AssertionError("the request should have failed")

    line = error_line(asyncio.run(ask()))
    assert line is not None
    assert "<class" not in line and "Traceback" not in line
    return line


@pytest.mark.parametrize(
    ("status", "expected", "not_expected"),
    [
        (400, "the model service rejected the request (HTTP 400: Invalid 'messages[3].role': 5", "OPENAI_API_KEY"),
        (401, "the model service refused the credentials (HTTP 401: Invalid 'messages[3].role': 5", "corrupt"),
        (404, "the model service does not know the model or endpoint (HTTP 404: Invalid", "corrupt"),
    ],
)
def test_model_failures_say_whether_the_request_or_the_settings_are_at_fault(
    monkeypatch: pytest.MonkeyPatch, status: int, expected: str, not_expected: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    service = FailingModelService(status, "Invalid 'messages[3].role': 5")
    try:
        line = model_failure_line(service.url)
    finally:
        service.close()
    assert line.startswith(expected), line
    assert line.count("Invalid 'messages[3].role'") == 1  # the detail once
    assert not_expected not in line
    if status == 400:
        assert line.endswith("the conversation history or saved session sent with it may be corrupt")
    else:
        assert line.endswith("check OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL")


def test_unreachable_model_names_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    line = model_failure_line(f"http://127.0.0.1:{free_loopback_port()}/v1")
    assert (
        line
        == "cannot reach the model service (Connection error.): check OPENAI_API_KEY / OPENAI_MODEL / OPENAI_BASE_URL"
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_model_that_never_answers_is_one_line_within_the_timeout(
    silent_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_framework import Agent
    from agent_framework.openai import OpenAIChatCompletionClient

    async def main() -> None:
        async with open_backends() as backends:
            client = OpenAIChatCompletionClient(**backends.model.client_kwargs())
            try:
                await Agent(client=client).run("Hello")
            finally:
                await client.client.close()

    settings = {"OPENAI_API_KEY": "sk-test", "OPENAI_MODEL": "gpt-4o-mini", "OPENAI_TIMEOUT_SECONDS": "1"}
    settings["OPENAI_BASE_URL"] = f"http://127.0.0.1:{silent_port}/v1"
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        run_sample(main())
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("Backends: model=OpenAI gpt-4o-mini (http://127.0.0.1:")
    assert captured.err == (
        "error: the model service did not answer within 1 s (OPENAI_TIMEOUT_SECONDS): check OPENAI_API_KEY / "
        "OPENAI_MODEL / OPENAI_BASE_URL and that the endpoint is up\n"
    )


# endregion

# region settings


def test_env_file_is_read_but_the_environment_wins(
    no_service_settings: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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


def test_a_settings_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"OPENAI_MODEL=caf\xe9\n")
    monkeypatch.setattr(os, "environ", {**os.environ, "SAMPLES_ENV_FILE": str(env_file)})

    async def main() -> None:
        async with open_backends():
            raise AssertionError("should not get here")

    assert run_sample_error(main(), capsys) == (
        f"cannot read the settings file {env_file}: it is not UTF-8 text (byte 0xe9 at offset 16); save it as UTF-8"
    )


@pytest.mark.parametrize(
    ("redis_url", "expected"),
    [
        ("not-a-url", "REDIS_URL=not-a-url is not a Redis URL: use e.g. redis://localhost:6379/0"),
        ("redis://127.0.0.1:99999/0", "REDIS_URL=redis://127.0.0.1:99999/0 is not a valid URL (Port out of range"),
        ("redis://:pw@127.0.0.1:6379/zero", "REDIS_URL=redis://:***@127.0.0.1:6379/zero names database 'zero'"),
        ("redis:///0", "REDIS_URL=redis:///0 names no host"),
    ],
)
def test_malformed_redis_url_is_one_line(
    redis_url: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)

    async def main() -> None:
        async with open_backends(model=False, redis=True):
            raise AssertionError("should not get here")

    assert run_sample_error(main(), capsys).startswith(expected)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://[::1", "DTS_ENDPOINT=http://[::1 is not a valid URL (Invalid IPv6 URL)"),
        ("http://localhost:70000", "DTS_ENDPOINT=http://localhost:70000 is not a valid URL (Port out of range"),
        ("grpc://localhost:8080", "DTS_ENDPOINT=grpc://localhost:8080 must start with http:// (the emulator"),
        ("http://", "DTS_ENDPOINT=http:// is not a URL like http://localhost:8080"),
    ],
)
def test_malformed_dts_endpoint_is_one_line(
    endpoint: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DTS_ENDPOINT", endpoint)

    async def main() -> None:
        async with open_backends(model=False, scheduler=True):
            raise AssertionError("should not get here")

    assert run_sample_error(main(), capsys).startswith(expected)


def test_credentials_in_printed_urls_are_masked() -> None:
    assert masked_url("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert masked_url("redis://alice:hunter2@host:6379/0") == "redis://alice:***@host:6379/0"
    assert masked_url("redis://host:6379/0?password=hunter2&db=1") == "redis://host:6379/0?password=***&db=1"
    assert (
        masked_url("rediss://host/0?ssl_cert_reqs=none&api_key=k1") == "rediss://host/0?ssl_cert_reqs=none&api_key=***"
    )
    assert masked_url("https://sched.westus.durabletask.io") == "https://sched.westus.durabletask.io"
    assert masked_url("http://[::1") == "http://[::1"  # not a URL: shown as given


def test_banner_keeps_the_endpoints_scheme_and_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTS_ENDPOINT", "https://localhost:8080")
    assert select_scheduler().description == "Durable Task Scheduler at https://localhost:8080 (task hub default)"
    monkeypatch.setenv("DTS_ENDPOINT", "localhost:8080")  # no scheme: the emulator's plain http
    scheduler = select_scheduler()
    assert (scheduler.host_address, scheduler.secure_channel) == ("localhost:8080", False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0?password=hunter2")
    assert select_redis().description == "Redis at redis://127.0.0.1:6379/0?password=***"


# endregion

# region Redis


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


@pytest.mark.parametrize(
    "url_form", ["redis://:secret@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=secret"]
)
def test_unreachable_redis_is_one_line_naming_redis_url_and_its_port(
    url_form: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_loopback_port()
    monkeypatch.setenv("REDIS_URL", url_form.format(port=port))

    async def main() -> None:
        async with open_backends(redis=True):
            raise AssertionError("should not get here")

    line = run_sample_error(main(), capsys)
    assert line.startswith(f"cannot reach Redis at REDIS_URL={masked_url(url_form.format(port=port))} (")
    assert "secret" not in line and "***" in line
    assert line.endswith(
        f"start one with `redis-server --port {port}` or unset REDIS_URL to use the in-process fakeredis"
    )


@pytest.fixture(scope="module")
def password_redis() -> Iterator[int]:
    """A local redis-server that requires the password `pw`; yields its port."""
    with local_redis_server("--requirepass", "pw") as url:
        if url is None:
            pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
        yield int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.parametrize(
    ("url_form", "expected"),
    [
        ("redis://127.0.0.1:{port}/0", "Redis at REDIS_URL=redis://127.0.0.1:{port}/0 requires a password ("),
        ("redis://:wrong@127.0.0.1:{port}/0", "Redis at REDIS_URL=redis://:***@127.0.0.1:{port}/0 refused the user"),
        ("redis://:pw@127.0.0.1:{port}/99", "Redis at REDIS_URL=redis://:***@127.0.0.1:{port}/99 has no database 99"),
    ],
)
def test_redis_check_says_what_failed(password_redis: int, url_form: str, expected: str) -> None:
    with pytest.raises(SampleError) as failure:
        asyncio.run(RedisBackend(url_form.format(port=password_redis)).check())
    message = str(failure.value)
    assert message.startswith(expected.format(port=password_redis)), message
    assert "redis-server --port" not in message and "6379" not in message
    asyncio.run(RedisBackend(f"redis://:pw@127.0.0.1:{password_redis}/0").check())  # control: the right password


# endregion

# region scheduler


def test_unreachable_scheduler_is_one_line_naming_dts_endpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_loopback_port()
    monkeypatch.setenv("DTS_ENDPOINT", f"http://localhost:{port}")

    async def main() -> None:
        async with open_backends(scheduler=True):
            raise AssertionError("should not get here")

    line = run_sample_error(main(), capsys)
    assert line.startswith(
        f"cannot reach the Durable Task Scheduler at DTS_ENDPOINT=http://localhost:{port} (UNAVAILABLE"
    )
    assert f"python -m sample_support.serve_scheduler --port {port}" in line


@pytest.mark.timeout(30)
def test_a_scheduler_that_never_answers_is_one_line_within_the_check_deadline(
    silent_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DTS_ENDPOINT", f"http://127.0.0.1:{silent_port}")

    async def main() -> None:
        async with open_backends(model=False, scheduler=True):
            raise AssertionError("should not get here")

    assert run_sample_error(main(), capsys).startswith(
        f"the Durable Task Scheduler at DTS_ENDPOINT=http://127.0.0.1:{silent_port} did not answer within 5 s"
    )


def test_https_scheduler_without_azure_login_is_one_line(
    no_azure_login: None, silent_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DTS_ENDPOINT", f"https://127.0.0.1:{silent_port}")

    async def main() -> None:
        async with open_backends(model=False, scheduler=True):
            raise AssertionError("should not get here")

    line = run_sample_error(main(), capsys)  # also: no azure-identity log lines before it
    assert line.startswith("Azure sign-in failed for DTS_ENDPOINT (or unset it to use the embedded scheduler) (")
    assert line.endswith("run `az login` (or set AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET)")


def test_scheduler_lost_during_a_run_is_one_line_naming_dts_endpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sample_support.scheduler import start_embedded_scheduler

    embedded = start_embedded_scheduler()
    monkeypatch.setenv("DTS_ENDPOINT", f"http://127.0.0.1:{embedded.port}")

    async def main() -> None:
        async with open_backends(model=False, scheduler=True) as backends:
            assert backends.scheduler is not None
            client = backends.scheduler.client()
            try:
                embedded.stop(grace=0)  # the scheduler goes away mid-run
                client.get_orchestration_state("any")
            finally:
                client.close()

    capsys.readouterr()
    line = run_sample_error(main(), capsys)
    assert line.startswith(
        f"the Durable Task Scheduler at DTS_ENDPOINT=http://127.0.0.1:{embedded.port} stopped answering (UNAVAILABLE: "
    )
    assert "python -m sample_support.serve_scheduler --port 8080" in line


def test_banner_names_all_three_backends(no_service_settings: None, capsys: pytest.CaptureFixture[str]) -> None:
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
    worker = start_child(
        [sys.executable, "-m", "tests.echo_worker"],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "worker ready"
        client = scheduler.client()
        instance_id = client.schedule_new_orchestration("echo_orchestrator", instance_id=unique("echo"))
        client.raise_orchestration_event(instance_id, "say", data="hello from the test")
        state = client.wait_for_orchestration_completion(instance_id, timeout=30)
        client.close()
        assert state is not None and state.runtime_status.name == "COMPLETED"
        output = json.loads(state.serialized_output or "null")
        assert output == {"text": "HELLO FROM THE TEST", "worker_pid": worker.pid}
        assert json.loads(state.serialized_custom_status or "null") == output
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    finally:
        stop_child(worker)
    assert worker.returncode == 0
    assert "Traceback" not in stderr and "CANCELLED" not in stderr, stderr


@pytest.mark.parametrize("https", [False, True], ids=["unreachable", "https-without-login"])
def test_a_worker_says_ready_only_once_the_scheduler_answered(
    https: bool, no_azure_login: None, silent_port: int
) -> None:
    endpoint = f"https://127.0.0.1:{silent_port}" if https else f"http://127.0.0.1:{free_loopback_port()}"
    result = run_script_inline("tests/echo_worker.py", env={"DTS_ENDPOINT": endpoint})
    assert (result.returncode, result.stdout) == (1, "")
    expected = "error: Azure sign-in failed for DTS_ENDPOINT" if https else "error: cannot reach the Durable Task"
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr


def add_orchestration(worker: Any, name: str) -> None:
    """Registers an orchestration called `name` whose activity returns which orchestration ran it."""

    def activity(_: task.ActivityContext, text: str) -> str:
        return f"{name}: {text}"

    def orchestration(ctx: task.OrchestrationContext, text: str) -> Any:
        return (yield ctx.call_activity(activity, input=text))

    activity.__name__, orchestration.__name__ = f"{name}_activity", name  # durabletask registers by __name__
    worker.add_orchestrator(orchestration)
    worker.add_activity(activity)


@pytest.mark.timeout(60)
def test_workers_of_different_samples_share_a_scheduler(scheduler: SchedulerBackend) -> None:
    """A worker receives only what it registered: an orchestration the other worker does not know waits for the
    worker that knows it instead of failing ("orchestrator was not registered")."""
    prefix = unique("sample")
    first, second = scheduler.worker(), scheduler.worker()
    add_orchestration(first, f"{prefix}_first")
    add_orchestration(second, f"{prefix}_second")
    client = scheduler.client()
    first.start()
    try:
        # The first worker is connected: it has just run one of its own.
        warm_up = client.schedule_new_orchestration(f"{prefix}_first", input="warm-up")
        assert client.wait_for_orchestration_completion(warm_up, timeout=30).serialized_output == json.dumps(
            f"{prefix}_first: warm-up"
        )
        waiting = client.schedule_new_orchestration(f"{prefix}_second", input="hello")  # only the first worker runs
        second.start()
        state = client.wait_for_orchestration_completion(waiting, timeout=30)
        assert state is not None and state.runtime_status.name == "COMPLETED", state and state.failure_details
        assert state.serialized_output == json.dumps(f"{prefix}_second: hello")
    finally:
        first.stop()
        second.stop()
        client.close()


def embedded_scheduler_process(port: int) -> subprocess.Popen[str]:
    return start_child(
        [sys.executable, "-m", "sample_support.serve_scheduler", "--port", str(port)],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def serve_scheduler_here(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sample_support.serve_scheduler args` run in this process (its `__main__` is `main()`), for the runs
    that end at once; returns what the process would."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["serve_scheduler.py", *args])
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as end:
            serve_scheduler.main()
    assert isinstance(end.value.code, int)
    return subprocess.CompletedProcess(sys.argv, end.value.code, stdout.getvalue(), stderr.getvalue())


@pytest.mark.timeout(30)
def test_embedded_scheduler_runs_as_its_own_process_on_a_free_port_and_says_it_is_embedded() -> None:
    process = embedded_scheduler_process(0)  # `--port 0` picks a free port and prints it
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Embedded Durable Task scheduler listening on 127.0.0.1:") and line.endswith("."), line
        port = int(line.removesuffix(".").rsplit(":", 1)[1])
        assert port > 0
        backend = SchedulerBackend(f"127.0.0.1:{port}", "default", secure_channel=False)
        backend.check()
        assert backend.is_embedded  # reached through DTS_ENDPOINT, still recognised
        client = backend.client()
        assert client.get_orchestration_state("no-such-instance") is None
        client.close()
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    finally:
        stop_child(process)
    assert (process.returncode, stderr) == (0, "")


def test_a_scheduler_that_is_not_the_embedded_one_is_not_reported_as_embedded() -> None:
    port = free_loopback_port()
    stock = InMemoryOrchestrationBackend(port=port)  # answers the same protocol, without our marker
    stock.start()
    try:
        assert SchedulerBackend(f"127.0.0.1:{port}", "default", secure_channel=False).is_embedded is False
    finally:
        stock.stop(grace=0)


@pytest.mark.timeout(30)
def test_a_second_embedded_scheduler_on_a_taken_port_fails_at_once() -> None:
    from sample_support.scheduler import start_embedded_scheduler

    first = start_embedded_scheduler()  # holds its port the way the first scheduler process would
    try:
        port = first.port
        second = serve_scheduler_here("--port", str(port))
    finally:
        first.stop(grace=0)
    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == (
        f"error: cannot start the embedded scheduler on 127.0.0.1:{port}: the port is taken (is another scheduler "
        "running there?); choose another --port, or 0 for a free one\n"
    )


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_serve_scheduler_rejects_a_port_out_of_range(port: str) -> None:
    result = serve_scheduler_here("--port", port)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.endswith(
        f"error: argument --port: {port!r} is not a port number (1-65535, or 0 for a free one)\n"
    )


# endregion

# region imports and child processes


def test_the_first_make_says_what_it_installs_before_pip_runs() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n prints the install recipe without running it; -W pretends requirements.txt changed. Under `make test`
    # (CI) this make is a sub-make: without the parent's variables it prints no "Entering directory" line.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    command = ["make", "--no-print-directory", "-n", "-W", "requirements.txt", ".venv/.installed"]
    result = run_child(command, timeout=30, cwd=REPO_DIR, text=True, env=env)
    commands = result.stdout.splitlines()
    assert result.returncode == 0 and commands[0].startswith('echo "Creating .venv and installing requirements.txt')
    assert any("pip install" in command for command in commands[1:])


def test_importing_the_support_package_loads_no_service_library() -> None:
    code = """
        import sys
        import sample_support
        from sample_support import Backends, SampleError, open_backends, run_sample
        print(sorted({name.split(".")[0] for name in sys.modules} & {"fakeredis", "redis", "durabletask", "grpc"}))
    """
    result = run_python(code)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("helper", ["start_worker_process", "run_script", "local_redis_server"])
def test_children_of_a_killed_test_run_die_with_it(helper: str, tmp_path: Path) -> None:
    """SIGKILL a test process (as a CI timeout or a second Ctrl+C would) while its child runs: the child dies too."""
    if helper == "local_redis_server" and not shutil.which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('Worker ready', flush=True)\ntime.sleep(120)\n")
    code = f"""
        import time
        from tests.local_servers import local_redis_server

        helper = {helper!r}
        if helper == "local_redis_server":
            with local_redis_server():
                time.sleep(120)
        else:
            from tests import conftest  # its imports take a while: only where a helper of it runs

            if helper == "start_worker_process":
                print(conftest.start_worker_process({str(script)!r}).pid, flush=True)
            else:
                conftest.run_script_process({str(script)!r}, timeout=120)
    """
    parent = start_child([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_DIR, stdout=subprocess.PIPE, text=True)
    try:
        child = wait_for_child_of(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = is_running(child)
    finally:
        stop_child(parent)
    assert not alive, f"the {helper} child {child} outlived the killed test process"


def wait_for_child_of(pid: int) -> int:
    """The pid of `pid`'s first child process, once it exists."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent (now init) has not reaped it yet


# endregion


@pytest.mark.parametrize(("flags", "frozen"), [([], True), (["-W", "error::ResourceWarning"], False)])
def test_the_exit_skips_the_final_collection_unless_the_run_checks_for_leaks(flags: list[str], frozen: bool) -> None:
    code = """
        import atexit, gc
        from sample_support import run_sample
        atexit.register(lambda: print("frozen objects:", gc.get_freeze_count()))  # runs after run_sample's handler
        async def main():
            pass
        run_sample(main())
    """
    result = run_child([sys.executable, *flags, "-c", textwrap.dedent(code)], timeout=30, cwd=REPO_DIR, text=True)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.rsplit(":", 1)[1])
    assert (count > 0) is frozen  # frozen: the interpreter's exit does not walk the imports' objects


def test_only_a_group_made_of_interrupts_counts_as_an_interrupt() -> None:
    """Python 3.10: an interrupt raised inside a task group reaches the sample's task as an exception group."""
    from sample_support.config import _only_interrupts

    group_type = importlib.import_module("builtins" if sys.version_info >= (3, 11) else "exceptiongroup")
    group = group_type.BaseExceptionGroup
    assert _only_interrupts(group("task group", [KeyboardInterrupt(), group("inner", [KeyboardInterrupt()])]))
    assert _only_interrupts(KeyboardInterrupt())
    assert not _only_interrupts(group("mixed", [KeyboardInterrupt(), ValueError("a real error")]))
    assert not _only_interrupts(ValueError("a real error"))
