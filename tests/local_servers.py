"""Test-only helpers: a free loopback port, a throwaway `redis-server`, and child processes that die with the tests.

Every process a test starts should go through `child_process_options()` (or `start_child` / `run_child`): the child
gets its own process group, so `stop_child` reaches whatever it started too, and on Linux the kernel sends it
SIGKILL as soon as the test process dies, even when pytest itself is killed with SIGKILL and no cleanup runs.
A grandchild (a process the child starts itself) is its parent's responsibility: the kernel signal reaches only
the direct child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_PR_SET_PDEATHSIG = 1
# The C library's prctl() (Linux) and signal(), looked up once here so a forked child only makes system calls.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl if sys.platform.startswith("linux") else None


def child_process_options() -> dict[str, Any]:
    """`subprocess.Popen` keyword arguments for a test's child: a process group of its own, killed with the tests,
    and Ctrl+C (SIGINT) acting on it as in a terminal even when the tests run in the background (which ignores it)."""
    prctl, restore_sigint, parent = _PRCTL, _LIBC.signal, os.getpid()

    def prepare_child() -> None:
        restore_sigint(signal.SIGINT, 0)  # SIG_DFL: an ignored SIGINT would be inherited, and Python keeps it ignored
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return {"start_new_session": True, "preexec_fn": prepare_child}


def start_child(args: Sequence[str], **popen_options: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(args, ...)` with `child_process_options()`."""
    return subprocess.Popen(list(args), **child_process_options(), **popen_options)


def stop_child(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's whole process group (if anything of it is still running), reap the child, close its
    pipes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def run_child(args: Sequence[str], *, timeout: float, **popen_options: Any) -> subprocess.CompletedProcess[Any]:
    """Like `subprocess.run(args, capture_output=True, timeout=...)`, but a timed-out child's process group is killed
    too (subprocess.run kills only the child), and the child dies with the test process."""
    process = start_child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_options)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        stop_child(process)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_redis_server(*options: str) -> Iterator[str | None]:
    """A throwaway `redis-server` (no persistence) on a free loopback port: yields its URL, or None if the
    binary is not installed. `options` go on its command line (e.g. "--requirepass", "secret")."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_loopback_port()
    server = start_child(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        finally:
            stop_child(server)
