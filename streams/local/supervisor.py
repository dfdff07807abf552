"""Supervised child processes: start, health-wait, restart with backoff, clean shutdown."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it has not ended within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop within %.0fs; killing it", proc.pid, timeout)
        proc.kill()
        proc.wait()


@dataclass
class Child:
    """One long-running process of the stack."""

    name: str
    argv: Sequence[str]
    log_file: Path
    ready: Callable[[], bool] = lambda: True
    ready_timeout: float = 60.0
    env: dict[str, str] | None = None
    stop_timeout: float = 30.0
    on_restart: Callable[[], None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _next_start: float = 0.0
    _started_at: float = field(default=0.0)

    def start(self) -> None:
        """Start the process with output to its log file (appending)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
        )
        out.close()
        self._started_at = time.monotonic()

    def wait_ready(self) -> bool:
        """Wait until ``ready()`` holds, or the process died, or the timeout passed."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.1)
        return False

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def last_log_line(self) -> str:
        """The last non-empty line of the log, for error messages."""
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL."""
        terminate(self.proc, self.stop_timeout)

    def maybe_restart(self) -> bool:
        """Restart a dead process with exponential backoff; True if it was restarted now."""
        if self.alive or self.proc is None:
            return False
        now = time.monotonic()
        if self._next_start == 0.0:
            # A process that ran a minute resets its backoff.
            ran = now - self._started_at
            delay = 1.0 if ran > 60 else min(30.0, 2.0 ** min(self.restarts, 5))
            log.warning("%s exited with status %s; restarting in %.0fs (log: %s)",
                        self.name, self.proc.returncode, delay, self.log_file)
            self._next_start = now + delay
            return False
        if now < self._next_start:
            return False
        self._next_start = 0.0
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart()
        self.start()
        return True
