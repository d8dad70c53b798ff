"""Drive `llamacpy` through a pseudo-terminal as a person would: read what it shows, type lines, press Ctrl-C
and Ctrl-D. Every wait has a deadline, and the child is killed when the test ends."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

USER_COLOR = b"\x1b[1m\x1b[32m"  # shown when control comes back to the person (with --color)


def _make_controlling_tty() -> None:  # runs in the child: the pty becomes its terminal, so ^C sends SIGINT
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    def __init__(self, args: list[str], stderr_path: Path, cwd: Path | None = None, timeout: float = 60.0):
        self.master, slave = os.openpty()
        self.stderr_file = open(stderr_path, "wb")
        self.stderr_path = stderr_path
        env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="xterm")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamacpy", *map(str, args)], stdin=slave, stdout=slave, stderr=self.stderr_file,
            cwd=cwd, env=env, start_new_session=True, preexec_fn=_make_controlling_tty, close_fds=True,
        )
        os.close(slave)
        self.out = b""
        self.deadline = time.monotonic() + timeout

    def _read_some(self, until: float) -> bool:
        left = min(until, self.deadline) - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.master], [], [], min(left, 0.5))
        if r:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                return False
            self.out += data
        return True

    def wait_for(self, pred, timeout: float = 30.0, what: str = "output") -> None:
        """Read until pred(self.out) holds; fail with the recent output if the deadline passes."""
        until = time.monotonic() + timeout
        while not pred(self.out):
            if not self._read_some(until) and (time.monotonic() >= until or self.proc.poll() is not None):
                if pred(self.out):
                    return
                raise AssertionError(f"timed out waiting for {what}; last output: {self.out[-400:]!r}; "
                                     f"stderr: {self.stderr()[-800:]}")

    def wait_for_control(self, timeout: float = 30.0) -> bytes:
        """Wait until control comes back to the person (the input colour is set and nothing follows it); returns
        the output since the previous call."""
        start = getattr(self, "_mark", 0)
        self.wait_for(lambda o: o.endswith(USER_COLOR) and len(o) > start, timeout, "control to come back")
        seg = self.out[start:]
        self._mark = len(self.out)
        return seg

    def type(self, data: bytes) -> None:
        os.write(self.master, data)
        self._mark = len(self.out)

    def expect_exit(self, timeout: float = 30.0) -> int:
        until = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < until:
            self._read_some(until)
        try:
            return self.proc.wait(timeout=max(0.1, until - time.monotonic()))
        finally:
            while self._read_some(time.monotonic() + 0.2):
                pass

    def stderr(self) -> str:
        self.stderr_file.flush()
        return self.stderr_path.read_bytes().decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        os.close(self.master)
        self.stderr_file.close()
