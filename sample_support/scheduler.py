"""Which Durable Task scheduler the samples use: a configured one, or an embedded one in this process.

- `DTS_ENDPOINT` (+ `DTS_TASKHUB`, default `default`) -> a Durable Task Scheduler: the local emulator
  (`http://localhost:8080`, no auth) or Azure (`https://...`, authenticated with `azure-identity`).
- nothing -> `durabletask.testing.InMemoryOrchestrationBackend`, served over real gRPC on a free
  loopback port. The samples connect to it with the same `DurableTaskSchedulerClient` /
  `DurableTaskSchedulerWorker` classes they would use against Azure.

`python -m sample_support.serve_scheduler --port 8080` runs the embedded scheduler as its own process, so
a worker and a client can run in separate terminals the way they would against the emulator.
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
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.testing import InMemoryOrchestrationBackend

from .config import SampleError, load_settings, setting

START_SCHEDULER_HINT = (
    "start one with `python -m sample_support.serve_scheduler --port 8080` (or the DTS emulator), "
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
    """The in-memory backend, bound to 127.0.0.1 (the stock one listens on every interface).

    Binding to port 0 lets gRPC pick a free port, which `start()` then reports.
    """

    def start(self) -> str:
        self._shutdown_event.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        stubs.add_TaskHubSidecarServiceServicer_to_server(self, server)
        self._port = server.add_insecure_port(f"127.0.0.1:{self._port}")
        if self._port == 0:
            raise SampleError("cannot start the embedded scheduler: the port is taken")
        server.start()
        self._server = server
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port


@dataclass
class SchedulerBackend:
    """Where orchestrations run; `client()` and `worker()` build the Azure-managed durabletask classes."""

    host_address: str
    taskhub: str
    secure_channel: bool
    credential: Any = None
    embedded: LoopbackSchedulerBackend | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        if self.embedded:
            return f"embedded Durable Task scheduler at {self.host_address}"
        return f"Durable Task Scheduler at {self.host_address} (task hub {self.taskhub})"

    def _connection(self) -> dict[str, Any]:
        return {
            "host_address": self.host_address,
            "taskhub": self.taskhub,
            "token_credential": self.credential,
            "secure_channel": self.secure_channel,
        }

    def client(self) -> DurableTaskSchedulerClient:
        return DurableTaskSchedulerClient(**self._connection(), logger=durabletask_logger("client"))

    def worker(self, **options: Any) -> DurableTaskSchedulerWorker:
        return DurableTaskSchedulerWorker(**self._connection(), logger=durabletask_logger("worker"), **options)

    def check(self) -> None:
        """Fail with one line naming DTS_ENDPOINT when the configured scheduler cannot be reached."""
        host, _, port = self.host_address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        except (OSError, ValueError) as error:
            raise SampleError(
                f"cannot reach the Durable Task Scheduler at DTS_ENDPOINT={self.host_address} ({error}): "
                f"{START_SCHEDULER_HINT}"
            ) from None

    def stop(self) -> None:
        if self.embedded:
            self.embedded.stop(grace=0.5)


def start_embedded_scheduler(port: int = 0) -> LoopbackSchedulerBackend:
    backend = LoopbackSchedulerBackend(port=port)
    backend.start()
    return backend


def select_scheduler() -> SchedulerBackend:
    """`DTS_ENDPOINT` / `DTS_TASKHUB` from the environment / `.env`, or an embedded scheduler on a free port."""
    load_settings()
    taskhub = setting("DTS_TASKHUB") or "default"
    if endpoint := setting("DTS_ENDPOINT"):
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if not parts.hostname:
            raise SampleError(f"DTS_ENDPOINT={endpoint} is not a URL like http://localhost:8080")
        address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if parts.scheme == "https":
            from azure.identity import DefaultAzureCredential

            return SchedulerBackend(address, taskhub, secure_channel=True, credential=DefaultAzureCredential())
        return SchedulerBackend(address, taskhub, secure_channel=False)
    embedded = start_embedded_scheduler()
    return SchedulerBackend(f"127.0.0.1:{embedded.port}", taskhub, secure_channel=False, embedded=embedded)
