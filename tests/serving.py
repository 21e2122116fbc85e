"""Start the real gunicorn on a free loopback port (for integration tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
LOGS: list[Path] = []  # every gunicorn log of this test session, scanned for secrets at the end


def generate(url: str, key: str, model: str = "image-prod", prompt: str = "p") -> requests.Response:
    """POST /v1/images/generations to a running gateway, with a caller key."""
    return requests.post(
        f"{url}/v1/images/generations",
        json={"model": model, "prompt": prompt},
        headers={"x-api-key": key},
        timeout=30,
    )


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_class() -> list[str]:
    """``AISIX_TEST_WORKER_CLASS`` runs the integration tests on another worker class than
    gunicorn.conf.py's (gevent): ``aisix_flask.workers.threads.ThreadWorker`` for gthread."""
    worker_class = os.environ.get("AISIX_TEST_WORKER_CLASS")
    return ["-k", worker_class] if worker_class else []


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py -b 127.0.0.1:<port> wsgi:app`` with AISIX_CONFIG set."""

    def __init__(
        self,
        config: Path,
        *,
        workers: int = 2,
        threads: int = 8,
        env: dict[str, str] | None = None,
        app: str = "wsgi:app",
        args: tuple[str, ...] = (),
        ready: str = "/readyz",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.with_suffix(".log")
        LOGS.append(self.log)
        command = [
            sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "-b", f"127.0.0.1:{self.port}", "-w", str(workers), "--threads", str(threads),
            *_worker_class(), *args, app,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env={
                    **os.environ,
                    **(env or {}),
                    "AISIX_CONFIG": str(config),
                    "PROMETHEUS_MULTIPROC_DIR": str(config.parent / f"prometheus-{self.port}"),
                },
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_ready(ready)

    def _wait_ready(self, path: str, timeout: float = 30) -> None:
        """Until ``path`` answers 200 (``/livez`` for a gateway whose ledger database is away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.url}{path}", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet, or no worker has finished booting
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
