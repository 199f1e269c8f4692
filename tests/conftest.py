"""Shared fixtures: the offline model endpoint, fake and real Redis, the embedded scheduler, running a script.

By default every test runs offline: the settings that select real services are removed from the
environment and `.env` is ignored. `pytest --use-env` (or SAMPLES_TEST_USE_ENV=1) keeps the Redis
(`REDIS_URL`) and the Durable Task Scheduler (`DTS_ENDPOINT`, `DTS_TASKHUB`) configured in the
environment or `.env`, so the same tests run against them. The model stays the offline one either way:
the tests assert on its exact, deterministic replies, which a real model's wording would not match.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fakeredis
import pytest
from durabletask.client import TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

from sample_support import RedisBackend, SchedulerBackend, load_settings, select_scheduler
from sample_support.config import MODEL_SETTINGS, SERVICE_SETTINGS
from sample_support.offline_model import offline_model_server
from tests.local_servers import local_redis_server, run_child, start_child
from tests.model_probe import ModelProbe

REPO_DIR = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--use-env",
        action="store_true",
        default=os.environ.get("SAMPLES_TEST_USE_ENV") == "1",
        help="run against the services configured in the environment / .env instead of the embedded ones",
    )


def using_real_services(config: pytest.Config) -> bool:
    return bool(config.getoption("--use-env"))


@pytest.fixture(scope="session", autouse=True)
def service_environment(request: pytest.FixtureRequest) -> Iterator[None]:
    """Offline by default: hide configured services and `.env` from the samples (see the module docstring)."""
    with pytest.MonkeyPatch.context() as patch:
        if using_real_services(request.config):
            load_settings()
        hidden = MODEL_SETTINGS if using_real_services(request.config) else MODEL_SETTINGS + SERVICE_SETTINGS
        for name in hidden:
            patch.delenv(name, raising=False)
        patch.setenv("SAMPLES_ENV_FILE", "")
        yield


@pytest.fixture
def no_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests about the defaults themselves: no REDIS_URL / DTS_ENDPOINT, even with --use-env."""
    for name in SERVICE_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def expected_banner(*, redis: bool = False, scheduler: bool = False) -> list[str]:
    """The parts of a sample's `Backends:` line that the environment of this test run implies."""
    parts = ["Backends: model=offline model at http://127.0.0.1:"]
    if redis:
        parts.append("redis=Redis at " if os.environ.get("REDIS_URL") else "redis=fakeredis (in-process)")
    if scheduler:
        configured = os.environ.get("DTS_ENDPOINT")
        parts.append("scheduler=Durable Task Scheduler at " if configured else "scheduler=embedded Durable Task")
    return parts


@pytest.fixture(scope="session")
def offline_model() -> Iterator[ModelProbe]:
    """The process-wide offline model endpoint (the one the samples' clients and the tests' worker processes use),
    seen through a probe: `base_url`, `rejections` (every HTTP 400), `tool_calls_emitted()`, `summaries_written()`."""
    with ModelProbe(offline_model_server()) as probe:
        yield probe


@pytest.fixture(autouse=True)
def no_model_rejections(request: pytest.FixtureRequest, offline_model: ModelProbe) -> Iterator[None]:
    """Every test fails if the offline model answered a 400 during it (a sample sent a malformed request),
    unless the test is marked `expects_model_rejections`."""
    before = len(offline_model.rejections)
    yield
    if request.node.get_closest_marker("expects_model_rejections") is None:
        assert offline_model.rejections[before:] == [], "the offline model rejected a request"


@pytest.fixture(scope="session")
def redis_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real Redis: `REDIS_URL` with --use-env, else a `redis-server` started here on a free loopback port."""
    if using_real_services(request.config) and os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with local_redis_server() as url:
        if url is None:
            pytest.skip("redis-server is not on PATH (apt-get install redis-server); only the fakeredis variant ran")
        yield url


@pytest.fixture(params=["fakeredis", "redis-server"])
def redis_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> RedisBackend:
    """Each Redis test runs twice: on fakeredis and on a real server. `REDIS_URL` is set to match,
    so a sample's `main()` run inside the test uses the same Redis."""
    if request.param == "fakeredis":
        monkeypatch.delenv("REDIS_URL", raising=False)
        return RedisBackend(None, fakeredis.FakeServer())
    url = request.getfixturevalue("redis_server_url")
    monkeypatch.setenv("REDIS_URL", url)
    return RedisBackend(url)


@pytest.fixture(scope="session")
def scheduler() -> Iterator[SchedulerBackend]:
    """The embedded scheduler over gRPC on a free loopback port (or DTS_ENDPOINT with --use-env)."""
    backend = select_scheduler()
    yield backend
    backend.stop()


@pytest.fixture
def scheduler_endpoint(scheduler: SchedulerBackend, monkeypatch: pytest.MonkeyPatch) -> str:
    """Points DTS_ENDPOINT at the shared scheduler, so samples and worker processes started by a test use it."""
    endpoint = f"{'https' if scheduler.secure_channel else 'http'}://{scheduler.host_address}"
    monkeypatch.setenv("DTS_ENDPOINT", endpoint)
    monkeypatch.setenv("DTS_TASKHUB", scheduler.taskhub)
    return endpoint


ScriptRunner = Callable[..., subprocess.CompletedProcess[str]]


def run_script_process(
    script: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python <script> [args]` from the repository folder, as a reader would; returns the finished process.

    The process (and its process group, on timeout) dies with the test run, even if pytest is killed."""
    return run_child(
        [sys.executable, script, *args], timeout=timeout, cwd=REPO_DIR, env={**os.environ, **(env or {})}, text=True
    )


@pytest.fixture
def run_script() -> ScriptRunner:
    """`run_script_process` as a fixture."""
    return run_script_process


def run_script_inline(
    script: str, *args: str, env: dict[str, str] | None = None, **_: object
) -> subprocess.CompletedProcess[str]:
    """Runs `<script> [args]` in this process as `python <script> [args]` would (its `__main__` block, argv, the
    repository folder as working directory, `env` added to the environment) and returns what a finished process
    would: exit status, stdout, stderr (an uncaught exception's traceback included). It skips only the ~1 s of
    interpreter start and imports, so tests of arguments and one-line errors need no process of their own."""
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_DIR)
        patch.setattr(sys, "argv", [script, *args])
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(REPO_DIR / script), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code
                returncode = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except BaseException:  # what the interpreter would print before exiting 1
                traceback.print_exc()
                returncode = 1
    return subprocess.CompletedProcess([script, *args], returncode, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def run_script_here() -> ScriptRunner:
    """`run_script_inline` as a fixture."""
    return run_script_inline


def unique(prefix: str) -> str:
    """An id no earlier test (or run, on a shared scheduler) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(scheduler: SchedulerBackend) -> Iterator[TaskHubGrpcClient]:
    """A scheduler client for one test."""
    client = scheduler.client()
    yield client
    client.close()


@contextmanager
def store_worker(scheduler: SchedulerBackend, register: Callable[[TaskHubGrpcWorker], None]) -> Iterator[None]:
    """An in-process worker with a chat message store's orchestration (`Store.register`) for a block of tests."""
    worker = scheduler.worker()
    register(worker)
    worker.start()
    yield
    worker.stop()


def start_worker_process(script: str) -> subprocess.Popen[str]:
    """`python <script> --role worker` on DTS_ENDPOINT (set by `scheduler_endpoint`); returns once it is ready.

    The worker dies with the test run, even if pytest is killed (see tests/local_servers.py)."""
    process = start_child(
        [sys.executable, script, "--role", "worker"],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Worker ready"):
            return process
    raise AssertionError(f"the worker exited before it was ready: {process.communicate()}")


def stop_worker_process(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, as a deployment would; the worker must exit 0 without a traceback. Returns (stdout, stderr)."""
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stdout, stderr
