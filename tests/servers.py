"""Test helpers for servers a test starts itself (MLflow, optuna-dashboard): a free port, a bounded start, a sure stop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

WAIT_S = 60
# one thread each; no usage reports: the servers must not reach beyond this machine
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def serving(command: list[str], ready_url: str, *, cwd: Path, log: Path) -> Iterator[None]:
    """Run a server in its own process group until ``ready_url`` answers (bounded); always stop it."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **QUIET_ENV})
    try:
        deadline = time.monotonic() + WAIT_S
        while not answers(ready_url):
            assert process.poll() is None, f"{command[0]} exited {process.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{ready_url} did not answer in {WAIT_S} s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it forks workers), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
