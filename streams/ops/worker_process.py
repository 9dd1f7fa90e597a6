"""One `mlrisk worker` subprocess, started, probed and stopped the same way by the demo, the bench and the tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from streams.config import REPO_ROOT, Settings
from streams.ops.probe import wait_ready


class WorkerProcess:
    """A worker with the settings in `env` (its web port is theirs: `MLRISK_WEB_PORT` or the default), its output
    appended to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = Settings.from_env(env).web_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout_s: float = 90.0) -> WorkerProcess:
        """Start it; with `wait_ready`, return once it has partitions assigned (raise if it exits first)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.ops.cli", "worker", "--quiet"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        assert self.proc is not None, "start() first"
        try:
            wait_ready(self.port, self.proc, timeout_s)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{self.log_tail()}") from None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory in MB (0 when it is not running)."""
        if not self.running():
            return 0.0
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """SIGTERM (SIGKILL with `kill`); a worker still there after `timeout_s` is killed."""
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
