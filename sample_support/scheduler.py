"""Which Durable Task scheduler the samples use: a configured one, or an embedded one in this process.

- `DTS_ENDPOINT` (+ `DTS_TASKHUB`, default `default`) -> a Durable Task Scheduler: the local emulator
  (`http://localhost:8080`, no auth) or Azure (`https://...`, authenticated with `azure-identity`).
- nothing -> `durabletask.testing.InMemoryOrchestrationBackend`, served over real gRPC on a free
  loopback port. The samples connect to it with the same `DurableTaskSchedulerClient` /
  `DurableTaskSchedulerWorker` classes they would use against Azure.

`python -m sample_support.serve_scheduler --port 8080` runs the embedded scheduler as its own process, so
a worker and a client can run in separate terminals the way they would against the emulator. The embedded
scheduler marks its answers (`SchedulerBackend.is_embedded`), however it was started.

`SchedulerBackend.check()` makes one gRPC round trip (with the Azure credential, for `https://`) and gives
up after `CHECK_TIMEOUT_SECONDS` (5 s): an unreachable, silent or unauthorised scheduler is one error line.
"""

from __future__ import annotations

import logging
import socket
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.internal.durabletask_grpc_interceptor import DTSDefaultClientInterceptorImpl
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.testing import InMemoryOrchestrationBackend
from google.protobuf import empty_pb2

from .config import (
    AZURE_LOGIN_HINT,
    SampleError,
    azure_credential,
    error_line,
    load_settings,
    masked_url,
    one_line,
    setting,
)

CHECK_TIMEOUT_SECONDS = 5.0
# Initial metadata the embedded scheduler adds to its answer to Hello: how a client recognises it.
EMBEDDED_MARKER = "x-sample-support-embedded-scheduler"
ENDPOINT_EXAMPLE = "http://localhost:8080"


def start_scheduler_hint(port: int | str = 8080) -> str:
    return (
        f"start one with `python -m sample_support.serve_scheduler --port {port}` (or the DTS emulator), "
        "or unset DTS_ENDPOINT to use the embedded scheduler"
    )


class _HarmlessShutdownNoise(logging.Filter):
    """Drops the warning a worker logs when its own stop() cancels the work-item stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Locally cancelled by application" not in record.getMessage()


def durabletask_logger(name: str) -> logging.Logger:
    """A quiet logger for durabletask clients and workers: warnings and errors only, no shutdown noise.

    Without one, durabletask attaches its own INFO-level console handler to every client and worker.
    """
    logger = logging.getLogger(f"durabletask.samples.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.addFilter(_HarmlessShutdownNoise())
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return logger


class LoopbackSchedulerBackend(InMemoryOrchestrationBackend):
    """The in-memory backend, bound to 127.0.0.1 only (the stock one listens on every interface), refusing a port
    another server holds (gRPC servers share ports through SO_REUSEPORT by default), and marking its answers.

    Binding to port 0 lets gRPC pick a free port, which `start()` then reports.
    """

    def start(self) -> str:
        if self._port and _port_is_taken(self._port):  # before gRPC, which would log its own error lines too
            raise SampleError(self._port_taken())
        self._shutdown_event.clear()
        # Each connected worker holds one thread for its work-item stream, each waiting client another.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
        stubs.add_TaskHubSidecarServiceServicer_to_server(self, server)
        try:
            port = server.add_insecure_port(f"127.0.0.1:{self._port}")
        except RuntimeError:  # grpcio raises where older versions returned 0
            port = 0
        if port == 0:
            raise SampleError(self._port_taken())
        self._port = port
        server.start()
        self._server = server
        return f"127.0.0.1:{port}"

    @property
    def port(self) -> int:
        return self._port

    def _port_taken(self) -> str:
        return (
            f"cannot start the embedded scheduler on 127.0.0.1:{self._port}: the port is taken (is another "
            "scheduler running there?); choose another --port, or 0 for a free one"
        )

    def Hello(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> empty_pb2.Empty:
        context.send_initial_metadata(((EMBEDDED_MARKER, "1"),))
        return super().Hello(request, context)


def _port_is_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to listen on
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class SchedulerWorker(DurableTaskSchedulerWorker):
    """A `DurableTaskSchedulerWorker` that knows its scheduler (`serve_until_stopped` checks it before "ready")."""

    def __init__(self, scheduler: SchedulerBackend, **options: Any) -> None:
        super().__init__(**options)
        self.scheduler = scheduler


@dataclass
class SchedulerBackend:
    """Where orchestrations run; `client()` and `worker()` build the Azure-managed durabletask classes."""

    host_address: str
    taskhub: str
    secure_channel: bool
    credential: Any = None
    embedded: LoopbackSchedulerBackend | None = field(default=None, repr=False)
    endpoint: str | None = None  # DTS_ENDPOINT as configured, shown (credentials masked) in messages
    _answers_as_embedded: bool | None = field(default=None, init=False, repr=False)

    @property
    def description(self) -> str:
        if self.embedded:
            return f"embedded Durable Task scheduler at {self.host_address}"
        return f"Durable Task Scheduler at {self._shown_endpoint} (task hub {self.taskhub})"

    @property
    def is_embedded(self) -> bool:
        """True for the in-memory scheduler, in this process or reached through DTS_ENDPOINT (`serve_scheduler`).

        It never re-dispatches an activity whose worker died; a Durable Task Scheduler does."""
        if self.embedded is not None:
            return True
        if self._answers_as_embedded is None:
            self.check()
        return bool(self._answers_as_embedded)

    @property
    def _shown_endpoint(self) -> str:
        return masked_url(self.endpoint) if self.endpoint else self.host_address

    def _connection(self) -> dict[str, Any]:
        return {
            "host_address": self.host_address,
            "taskhub": self.taskhub,
            "token_credential": self.credential,
            "secure_channel": self.secure_channel,
        }

    def client(self) -> DurableTaskSchedulerClient:
        return DurableTaskSchedulerClient(**self._connection(), logger=durabletask_logger("client"))

    def worker(self, **options: Any) -> SchedulerWorker:
        """A worker that receives only the orchestrations, activities and entities registered on it, so workers of
        different samples (or apps) can share one scheduler and task hub without failing each other's work."""
        worker = SchedulerWorker(self, **self._connection(), logger=durabletask_logger("worker"), **options)
        worker.use_work_item_filters()  # built from the registrations when the worker starts
        return worker

    def check(self, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        """One gRPC round trip to the scheduler (Hello, with the credential), or one line naming DTS_ENDPOINT."""
        if self.secure_channel:
            channel = grpc.secure_channel(self.host_address, grpc.ssl_channel_credentials())
        else:
            channel = grpc.insecure_channel(self.host_address)
        try:
            intercepted = grpc.intercept_channel(
                channel, DTSDefaultClientInterceptorImpl(self.credential, self.taskhub)
            )
            _, call = stubs.TaskHubSidecarServiceStub(intercepted).Hello.with_call(empty_pb2.Empty(), timeout=timeout)
            metadata = call.initial_metadata() or ()
        except grpc.RpcError as error:
            raise SampleError(self._failure(error, timeout)) from None
        except Exception as error:
            line = error_line(error)  # an Azure credential that found no login
            if line is None:
                raise
            raise SampleError(line) from None
        finally:
            channel.close()
        self._answers_as_embedded = any(key == EMBEDDED_MARKER for key, _ in metadata)

    def _failure(self, error: grpc.RpcError, timeout: float) -> str:
        code = error.code() if callable(getattr(error, "code", None)) else None
        name = getattr(code, "name", "UNKNOWN")
        details = one_line(error.details() if callable(getattr(error, "details", None)) else str(error), 200)
        where = f"the Durable Task Scheduler at DTS_ENDPOINT={self._shown_endpoint}"
        port = self.host_address.rpartition(":")[2]
        if name == "DEADLINE_EXCEEDED":
            return (
                f"{where} did not answer within {timeout:g} s: check that DTS_ENDPOINT points at a Durable Task "
                f"Scheduler; {start_scheduler_hint(port)}"
            )
        if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return (
                f"{where} refused the credentials ({name}: {details}): sign in as an identity with access to task hub "
                f"{self.taskhub}: {AZURE_LOGIN_HINT}"
            )
        if name == "UNIMPLEMENTED":
            return f"{where} is not a Durable Task Scheduler (UNIMPLEMENTED: {details}): check DTS_ENDPOINT"
        return f"cannot reach {where} ({name}: {details}): {start_scheduler_hint(port)}"

    def stop(self) -> None:
        if self.embedded:
            self.embedded.stop(grace=0.5)


def start_embedded_scheduler(port: int = 0) -> LoopbackSchedulerBackend:
    backend = LoopbackSchedulerBackend(port=port)
    backend.start()
    return backend


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """`DTS_ENDPOINT` -> (gRPC host address, secure channel?); one line naming the setting when it is malformed."""
    shown = masked_url(endpoint)
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        port = parts.port
    except ValueError as error:
        raise SampleError(f"DTS_ENDPOINT={shown} is not a valid URL ({error}): use e.g. {ENDPOINT_EXAMPLE}") from None
    if parts.scheme not in ("http", "https"):
        raise SampleError(
            f"DTS_ENDPOINT={shown} must start with http:// (the emulator or a local scheduler) or https:// (Azure)"
        )
    if not parts.hostname or port == 0:
        raise SampleError(f"DTS_ENDPOINT={shown} is not a URL like {ENDPOINT_EXAMPLE}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    secure = parts.scheme == "https"
    return f"{host}:{port or (443 if secure else 80)}", secure


def select_scheduler() -> SchedulerBackend:
    """`DTS_ENDPOINT` / `DTS_TASKHUB` from the environment / `.env`, or an embedded scheduler on a free port.

    Nothing is contacted for a configured endpoint: `check()` does that."""
    load_settings()
    taskhub = setting("DTS_TASKHUB") or "default"
    if endpoint := setting("DTS_ENDPOINT"):
        address, secure = parse_endpoint(endpoint)
        credential = azure_credential() if secure else None
        return SchedulerBackend(address, taskhub, secure, credential, endpoint=endpoint)
    return embedded_scheduler(taskhub)


def embedded_scheduler(taskhub: str = "default") -> SchedulerBackend:
    """An embedded scheduler on a free loopback port, whatever the environment configures."""
    embedded = start_embedded_scheduler()
    return SchedulerBackend(f"127.0.0.1:{embedded.port}", taskhub, secure_channel=False, embedded=embedded)
