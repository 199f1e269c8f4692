"""Run the embedded Durable Task scheduler as its own process, like the DTS emulator.

    python -m sample_support.serve_scheduler --port 8080
    export DTS_ENDPOINT=http://localhost:8080    # in the worker's and the client's terminals

`--port 0` picks a free port (printed). A port another process holds is refused at once. It lives in its own
module so that `python -m` does not run a module the package has already imported.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from .config import SampleError
from .scheduler import start_embedded_scheduler


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535, or 0 for a free one)")
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the embedded Durable Task scheduler on a loopback port.")
    parser.add_argument(
        "--port",
        type=port_number,
        default=8080,
        help="port to listen on (default: 8080, like the emulator; 0 picks a free one)",
    )
    args = parser.parse_args()
    try:
        backend = start_embedded_scheduler(args.port)
    except SampleError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"Embedded Durable Task scheduler listening on 127.0.0.1:{backend.port}.", flush=True)
    print(f"In other terminals: export DTS_ENDPOINT=http://localhost:{backend.port}; Ctrl+C stops it.", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
    backend.stop(grace=0.5)


if __name__ == "__main__":
    main()
