"""Fixtures for the official-SDK contract tests: start the real `tollgate mock` binary.

The binary comes from $TOLLGATE_BIN (set by crates/cli/tests/sdk_contract.rs), else
target/debug/tollgate. Each mock listens on an ephemeral port and is ready once it has
printed its first stdout line, `listening on http://ADDR`; no sleeps, no fixed ports.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60
API_KEY = "sk-test-contract"


def tollgate_bin() -> str:
    path = os.environ.get("TOLLGATE_BIN") or str(ROOT / "target" / "debug" / "tollgate")
    if not Path(path).is_file():
        pytest.exit(f"tollgate binary not found at {path}: set TOLLGATE_BIN or run `cargo build -p tollgate`", 2)
    return path


class Mock:
    """One running `tollgate mock` process and its control API (/_sim/*)."""

    def __init__(self, *extra_args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_MOCK_")}
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [tollgate_bin(), "mock", "--listen", "127.0.0.1:0", *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            # First line signals readiness; keep draining so the mock never blocks on a full pipe.
            for line in iter(stdout.readline, b""):
                lines.put(line)
            lines.put(b"")

        threading.Thread(target=pump, daemon=True).start()
        try:
            first = lines.get(timeout=STARTUP_TIMEOUT_S).decode().strip()
        except queue.Empty:
            first = ""
        prefix = "listening on http://"
        if not first.startswith(prefix):
            stderr = self.stderr()
            self.close()
            raise RuntimeError(f"tollgate mock did not announce its address; first line {first!r}, stderr:\n{stderr}")
        self.addr = first[len(prefix):]
        self.root_url = f"http://{self.addr}"
        self.base_url = f"{self.root_url}/v1"

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._stderr.close()

    def client(self, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("timeout", 30.0)
        return OpenAI(base_url=self.base_url, **kwargs)

    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """A raw HTTP call; returns (status, body parsed as JSON, else as text, else None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root_url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def control(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.http(method, path, body)
        assert 200 <= status < 300, f"{method} {path} answered {status}: {payload}"
        return payload

    def reset(self) -> None:
        self.control("POST", "/_sim/reset")

    def recorded(self, path: str | None = None) -> list[dict[str, Any]]:
        """What the mock received (GET /_sim/requests), optionally only for one path."""
        data = self.control("GET", "/_sim/requests")["data"]
        return [r for r in data if path is None or r["path"] == path]

    def queue_faults(self, **fault: Any) -> None:
        answer = self.control("POST", "/_sim/faults", fault)
        assert answer == {"queued": fault["count"]}, answer


def header(record: dict[str, Any], name: str) -> str | None:
    """A recorded request header, looked up case-insensitively."""
    for key, value in record["headers"].items():
        if key.lower() == name.lower():
            return value
    return None


@pytest.fixture(scope="session")
def mock() -> Iterator[Mock]:
    m = Mock()
    yield m
    m.close()


@pytest.fixture()
def sim(mock: Mock) -> Mock:
    """The session's mock with faults, recorded requests and rate-limit counters cleared."""
    mock.reset()
    return mock


@pytest.fixture(scope="session")
def client(mock: Mock) -> OpenAI:
    return mock.client()
