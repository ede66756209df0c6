"""Fixtures for the official-SDK contract tests: the real `tollgate` binary, two targets.

Every endpoint test runs against two targets (the `target` fixture is parametrized):

- "mock":    SDK → `tollgate mock` (the simulator), directly;
- "gateway": SDK → `tollgate serve` → the same simulator.

The simulator accepts only PROVIDER_KEY, so a 200 through the gateway proves that the
gateway substituted the provider key for the caller's tollgate key. Tests that inspect
what the simulator received (`/_sim/requests`) work in both modes: `target.sim` is the
simulator either way, and `target.upstream_attempts` says how many simulator requests
one SDK attempt makes for an error the gateway retries (1 direct, 3 through the
gateway: its own 2 retries).

The binary comes from $TOLLGATE_BIN (set by crates/cli/tests/sdk_contract.rs), else
target/debug/tollgate. Each process listens on an ephemeral port and is ready once it has
printed its first stdout line, `listening on http://ADDR`; no sleeps, no fixed ports.
The gateway keeps its state in a fresh temporary data directory per session.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60
PROVIDER_KEY = "sk-provider-contract"
PROVIDER_KEY_VAR = "CONTRACT_PROVIDER_KEY"
TARGETS = ("mock", "gateway")
# The gateway's default: 2 retries, so up to 3 upstream attempts per call.
GATEWAY_UPSTREAM_ATTEMPTS = 3


def tollgate_bin() -> str:
    path = os.environ.get("TOLLGATE_BIN") or str(ROOT / "target" / "debug" / "tollgate")
    if not Path(path).is_file():
        pytest.exit(f"tollgate binary not found at {path}: set TOLLGATE_BIN or run `cargo build -p tollgate`", 2)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without TOLLGATE_* settings (they would change the processes' defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


def http(
    url: str, method: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """A raw HTTP call; returns (status, body parsed as JSON, else as text, else None, headers)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, raw, hdrs = err.code, err.read(), err.headers
    headers_out = {k.lower(): v for k, v in hdrs.items()}
    if not raw:
        return status, None, headers_out
    try:
        return status, json.loads(raw), headers_out
    except ValueError:
        return status, raw.decode(errors="replace"), headers_out


class Server:
    """A `tollgate …` process that announces `listening on http://ADDR` on its first stdout line."""

    def __init__(self, args: list[str], env: dict[str, str], what: str) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [tollgate_bin(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            # First line signals readiness; keep draining so the process never blocks on a full pipe.
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
            raise RuntimeError(f"{what} did not announce its address; first line {first!r}, stderr:\n{stderr}")
        self.addr = first[len(prefix):]
        self.root_url = f"http://{self.addr}"
        self.base_url = f"{self.root_url}/v1"

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._stderr.close()

    def http(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """A raw HTTP call to this server; returns (status, body)."""
        status, payload, _ = http(self.root_url + path, method, body, headers)
        return status, payload


class Mock(Server):
    """One running `tollgate mock` process and its control API (/_sim/*)."""

    def __init__(self, *extra_args: str) -> None:
        super().__init__(["mock", "--listen", "127.0.0.1:0", *extra_args], clean_env(), "tollgate mock")

    def client(self, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("api_key", PROVIDER_KEY)
        kwargs.setdefault("timeout", 30.0)
        return OpenAI(base_url=self.base_url, **kwargs)

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


class DataDir:
    """A gateway data directory and the `tollgate keys` / `tollgate usage` commands on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)

    def cli(self, *args: str) -> str:
        """Runs `tollgate ARGS --data-dir DIR`, asserts exit 0, returns standard output."""
        done = subprocess.run(
            [tollgate_bin(), *args, "--data-dir", str(self.path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=clean_env(),
            timeout=60,
        )
        assert done.returncode == 0, f"tollgate {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}"
        return done.stdout.decode()

    def create_key(self, project: str = "contract", env: str = "dev", role: str | None = None) -> dict[str, str]:
        args = ["keys", "create", "--project", project, "--env", env, "--json"]
        if role is not None:
            args += ["--role", role]
        key = json.loads(self.cli(*args))
        assert set(key) == {
            "id", "key", "prefix", "project", "env", "role", "lane", "expires_at_ms",
        }, key
        assert key["key"].startswith(key["prefix"]) and key["key"].startswith(f"tg-{env}-"), key
        return key

    def revoke_key(self, key_id: str) -> None:
        self.cli("keys", "revoke", key_id)

    def usage(self, by: str) -> list[dict[str, Any]]:
        return json.loads(self.cli("usage", "--by", by, "--json"))


class Gateway(Server):
    """One running `tollgate serve` in front of a simulator, with its own data directory."""

    def __init__(self, sim: Mock, workdir: Path) -> None:
        self.sim = sim
        self.data = DataDir(workdir / "data")
        config = workdir / "tollgate.toml"
        # Keep the gateway's own retries fast; their count stays the default (2).
        # The project "answers" has its structured answers validated (test_answers.py).
        config.write_text('[upstream]\nretry_base_ms = 10\n\n[answers]\nvalidate_projects = ["answers"]\n')
        super().__init__(
            [
                "serve",
                "--listen", "127.0.0.1:0",
                "--data-dir", str(self.data.path),
                "--upstream-url", sim.base_url,
                "--upstream-api-key", f"env:{PROVIDER_KEY_VAR}",
                "--config", str(config),
            ],
            clean_env(**{PROVIDER_KEY_VAR: PROVIDER_KEY}),
            "tollgate serve",
        )

    def client(self, api_key: str, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("timeout", 30.0)
        return OpenAI(base_url=self.base_url, api_key=api_key, **kwargs)


def start_gateway(sim: Mock, workdir: Path, *roles: str) -> tuple[Gateway, list[dict[str, str]]]:
    """Creates one key per role in a fresh data directory, then starts the gateway on it.

    Keys exist before the server starts, so they work from its first request on.
    """
    data = DataDir(workdir / "data")
    keys = [data.create_key(role=role) for role in roles]
    return Gateway(sim, workdir), keys


@dataclass
class Target:
    """Where the SDK sends its calls: the simulator directly, or the gateway in front of it."""

    name: str
    sim: Mock
    root_url: str
    api_key: str
    # Simulator requests per SDK attempt when every upstream attempt fails retryably.
    upstream_attempts: int

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def client(self, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("timeout", 30.0)
        return OpenAI(base_url=self.base_url, **kwargs)

    def http(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """A raw HTTP call to the target, without a key unless `headers` carries one."""
        status, payload, _ = http(self.root_url + path, method, body, headers)
        return status, payload


def header(record: dict[str, Any], name: str) -> str | None:
    """A recorded request header, looked up case-insensitively."""
    for key, value in record["headers"].items():
        if key.lower() == name.lower():
            return value
    return None


@dataclass
class SessionGateway:
    gateway: Gateway
    member: dict[str, str]
    viewer: dict[str, str]
    revocable: dict[str, str]


@pytest.fixture(scope="session")
def mock() -> Iterator[Mock]:
    """The session's simulator; it accepts only PROVIDER_KEY."""
    m = Mock("--api-key", PROVIDER_KEY)
    yield m
    m.close()


@pytest.fixture(scope="session")
def session_gateway(mock: Mock) -> Iterator[SessionGateway]:
    """The session's gateway in front of `mock`, in a fresh temporary data directory."""
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-contract-"))
    gateway, (member, viewer, revocable) = start_gateway(mock, workdir, "member", "viewer", "member")
    yield SessionGateway(gateway, member, viewer, revocable)
    status = gateway.terminate()
    stderr = gateway.stderr()
    gateway.close()
    shutil.rmtree(workdir, ignore_errors=True)
    assert status == 0, f"tollgate serve exited {status} on SIGTERM; stderr:\n{stderr}"


@pytest.fixture(scope="session")
def gateway(session_gateway: SessionGateway) -> Gateway:
    return session_gateway.gateway


@pytest.fixture(scope="session", params=TARGETS)
def target(request: pytest.FixtureRequest, mock: Mock) -> Target:
    if request.param == "mock":
        return Target("mock", mock, mock.root_url, PROVIDER_KEY, 1)
    sg: SessionGateway = request.getfixturevalue("session_gateway")
    return Target("gateway", mock, sg.gateway.root_url, sg.member["key"], GATEWAY_UPSTREAM_ATTEMPTS)


@pytest.fixture()
def sim(target: Target) -> Mock:
    """The session's simulator with faults, recorded requests and rate-limit counters cleared."""
    target.sim.reset()
    return target.sim


@pytest.fixture(scope="session")
def client(target: Target) -> OpenAI:
    return target.client()
