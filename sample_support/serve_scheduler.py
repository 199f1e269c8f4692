"""Run the embedded Durable Task scheduler as its own process, like the DTS emulator.

    python -m sample_support.serve_scheduler --port 8080
    export DTS_ENDPOINT=http://localhost:8080    # in the worker's and the client's terminals

It lives in its own module so that `python -m` does not run a module the package has already imported.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from .config import SampleError
from .scheduler import start_embedded_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the embedded Durable Task scheduler on a loopback port.")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080, like the emulator)")
    args = parser.parse_args()
    try:
        backend = start_embedded_scheduler(args.port)
    except SampleError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Embedded Durable Task scheduler listening on 127.0.0.1:{backend.port}.", flush=True)
    print(f"In other terminals: export DTS_ENDPOINT=http://localhost:{backend.port}; Ctrl+C stops it.", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    backend.stop(grace=0.5)


if __name__ == "__main__":
    main()
