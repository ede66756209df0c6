"""Fallbacks (on 503, 429 and a timeout), the circuit breaker and offline answers as an
official SDK sees them.

A dedicated `tollgate serve` (its own config file and data directory) in front of two
simulators: `primary` (the [upstream]) and `backup` (an [[upstreams]] entry with its own
key, read from an environment variable). `gpt-4o-mini` has the chain
`[{ upstream = "backup" }]`; the project `resilience-offline` has an offline answer.
Faults are queued on the simulators' control API; the SDK clients do not retry
(max_retries=0), so what they see is what the gateway answered.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from openai import OpenAI

from conftest import PROVIDER_KEY, PROVIDER_KEY_VAR, DataDir, Mock, Server, clean_env

BACKUP_KEY = "sk-backup-contract"
BACKUP_KEY_VAR = "CONTRACT_BACKUP_KEY"
OFFLINE_PROJECT = "resilience-offline"
OFFLINE_TEXT = "The assistant is offline; {model} will be back soon."
COOLDOWN_MS = 400
# The primary's timeout: a queued latency fault far above it makes the call time out.
PRIMARY_TIMEOUT_MS = 1500
CLOSE_DEADLINE_S = 10.0


class Setup:
    def __init__(self, workdir: Path) -> None:
        self.primary = Mock("--api-key", PROVIDER_KEY)
        self.backup = Mock("--api-key", BACKUP_KEY)
        data = DataDir(workdir / "data")
        self.key = data.create_key(project="resilience")["key"]
        self.offline_key = data.create_key(project=OFFLINE_PROJECT)["key"]
        config = workdir / "tollgate.toml"
        config.write_text(
            f"""
[upstream]
url = "{self.primary.base_url}"
api_key = "env:{PROVIDER_KEY_VAR}"
max_retries = 0
timeout_ms = {PRIMARY_TIMEOUT_MS}

[[upstreams]]
name = "backup"
url = "{self.backup.base_url}"
api_key = "env:{BACKUP_KEY_VAR}"
timeout_ms = 30000

[fallbacks]
"gpt-4o-mini" = [{{ upstream = "backup" }}]

[circuit_breaker]
failures = 2
cooldown_ms = {COOLDOWN_MS}

[offline.projects]
{OFFLINE_PROJECT} = "{OFFLINE_TEXT}"
"""
        )
        self.gateway = Server(
            ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data.path), "--config", str(config)],
            clean_env(**{PROVIDER_KEY_VAR: PROVIDER_KEY, BACKUP_KEY_VAR: BACKUP_KEY}),
            "tollgate serve (resilience)",
        )

    def client(self, key: str) -> OpenAI:
        return OpenAI(base_url=self.gateway.base_url, api_key=key, max_retries=0, timeout=30.0)

    def close(self) -> None:
        for server in (self.gateway, self.primary, self.backup):
            server.close()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-resilience-"))
    s = Setup(workdir)
    yield s
    status = s.gateway.terminate()
    stderr = s.gateway.stderr()
    s.close()
    shutil.rmtree(workdir, ignore_errors=True)
    assert status == 0, f"tollgate serve exited {status}; stderr:\n{stderr}"


def chat_raw(client: OpenAI, model: str = "gpt-4o-mini"):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )


def test_a_503_falls_back_to_the_backup_which_the_answer_names(setup: Setup) -> None:
    setup.primary.reset()
    setup.backup.reset()
    client = setup.client(setup.key)
    # A healthy primary serves and says so.
    raw = chat_raw(client)
    assert raw.headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"

    setup.primary.queue_faults(count=1, status=503)
    raw = chat_raw(client)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollgate-served-by"] == "backup/gpt-4o-mini"
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model.startswith("gpt-4o-mini")
    assert [r["status"] for r in setup.primary.recorded("/v1/chat/completions")] == [200, 503]
    assert len(setup.backup.recorded("/v1/chat/completions")) == 1


def test_a_429_and_a_timeout_fall_back_too(setup: Setup) -> None:
    setup.primary.reset()
    setup.backup.reset()
    client = setup.client(setup.key)
    # A success first: the failure count starts from zero (failures = 2 opens it).
    assert chat_raw(client).headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"

    setup.primary.queue_faults(count=1, status=429)
    raw = chat_raw(client)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollgate-served-by"] == "backup/gpt-4o-mini"
    assert raw.parse().choices[0].message.content
    # A success between the two failures keeps the circuit closed.
    assert chat_raw(client).headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"

    setup.primary.queue_faults(count=1, latency_ms=PRIMARY_TIMEOUT_MS * 10)
    raw = chat_raw(client)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollgate-served-by"] == "backup/gpt-4o-mini"
    assert raw.parse().choices[0].message.content
    assert len(setup.backup.recorded("/v1/chat/completions")) == 2
    assert chat_raw(client).headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"


def test_the_circuit_opens_after_repeated_failures_and_a_probe_closes_it(setup: Setup) -> None:
    setup.primary.reset()
    setup.backup.reset()
    client = setup.client(setup.key)
    # A success first: the failure count starts from zero.
    assert chat_raw(client).headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"

    setup.primary.queue_faults(count=1000, status=503)
    for _ in range(2):
        assert chat_raw(client).headers["x-tollgate-served-by"] == "backup/gpt-4o-mini"
    calls = len(setup.primary.recorded())
    assert calls == 3

    # Open: answered by the backup without a call to the primary.
    raw = chat_raw(client)
    assert raw.headers["x-tollgate-served-by"] == "backup/gpt-4o-mini"
    assert raw.parse().choices[0].message.content
    assert len(setup.primary.recorded()) == calls

    # The primary recovers; after the cool-down one probe closes the circuit.
    setup.primary.control("DELETE", "/_sim/faults")
    start = time.monotonic()
    while chat_raw(client).headers["x-tollgate-served-by"] != "primary/gpt-4o-mini":
        assert time.monotonic() - start < CLOSE_DEADLINE_S, "the circuit never closed"
        time.sleep(0.05)
    assert len(setup.primary.recorded()) == calls + 1, "exactly one probe reached the primary"
    assert chat_raw(client).headers["x-tollgate-served-by"] == "primary/gpt-4o-mini"


def test_an_offline_answer_when_every_target_failed_plain_and_streamed(setup: Setup) -> None:
    setup.primary.reset()
    setup.primary.queue_faults(count=1000, status=503)
    client = setup.client(setup.offline_key)
    want = OFFLINE_TEXT.replace("{model}", "gpt-4.1")

    raw = chat_raw(client, "gpt-4.1")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-tollgate-served-by"] == "offline"
    assert raw.headers["x-tollgate-offline"] == "true"
    completion = raw.parse()
    assert completion.choices[0].message.content == want
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 0

    stream = client.chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0

    raw = client.responses.with_raw_response.create(model="gpt-4.1", input="hi")
    assert raw.headers["x-tollgate-offline"] == "true"
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == want
    assert response.usage.total_tokens == 0

    events = list(client.responses.create(model="gpt-4.1", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == want
    assert events[-1].response.output_text == want
