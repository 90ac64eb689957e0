"""The daemon as a process: stderr JSON events collected, a test-bound notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """An abstract unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"@quiltsync-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []
        self.stamps: list[float] = []  # monotonic arrival time of each message
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.messages.append(data.decode())
                self.stamps.append(time.monotonic())

    def arrivals(self, prefix: str) -> list[float]:
        """When each message starting with ``prefix`` arrived (monotonic)."""
        with self._lock:
            return [t for t, m in zip(self.stamps, self.messages, strict=True) if m.startswith(prefix)]

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 30, after: int = 0) -> int:
        """The index of the first message (at index >= after) matching pred; fails after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.snapshot()
            for i in range(after, len(msgs)):
                if pred(msgs[i]):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching notify message within {timeout}s: {msgs[-10:]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class DaemonProcess:
    def __init__(self, config_path: Path, env: dict[str, str] | None = None,
                 notify: NotifySocket | None = None) -> None:
        full_env = {**os.environ, **(env or {})}
        if notify is not None:
            full_env["NOTIFY_SOCKET"] = notify.name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quiltsync", "--config", str(config_path), "run"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.events: list[dict] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.raw.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 60, after: int = 0) -> dict:
        """The first event (at index >= after) matching pred; fails after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no matching event within {timeout}s; stderr tail:\n"
                                         + "".join(self.raw[-30:]))
                self._cond.wait(min(left, 0.5))

    def event_count(self) -> int:
        with self._cond:
            return len(self.events)

    def of(self, name: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
