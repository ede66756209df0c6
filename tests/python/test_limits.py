"""Rate limits as an official SDK sees them (SDK → tollgate serve → simulator).

Rules are set with `tollgate limits set` on the running gateway's store; the gateway
applies them within a second. A tiny RPM gives RateLimitError in OpenAI's shape with the
exact wait; every answer carries the six `x-ratelimit-*` headers, decreasing as the
caller spends; and the SDK's own retry, after waiting the `retry-after-ms` tollgate sent,
gets through at the first attempt.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest
from openai import RateLimitError

from conftest import Gateway, http
from support import MODEL

SIX = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)$")
APPLY_DEADLINE_S = 2.0


def probe(gateway: Gateway, key: str) -> tuple[int, dict[str, str]]:
    """One cheap model call with raw HTTP: (status, headers)."""
    status, _, headers = http(
        gateway.base_url + "/embeddings",
        "POST",
        {"model": "text-embedding-3-small", "input": "x"},
        {"authorization": f"Bearer {key}"},
    )
    return status, headers


def limited_key(gateway: Gateway, project: str, *limits: str, header: str, value: str) -> str:
    """A key of a new project with these limits, once the gateway applies both."""
    key = gateway.data.create_key(project=project)["key"]
    gateway.data.cli("limits", "set", "--project", project, *limits)
    start = time.monotonic()
    while probe(gateway, key)[1].get(header) != value:
        assert time.monotonic() - start < APPLY_DEADLINE_S, f"{project}: limit not applied in time"
    return key


def test_tiny_rpm_is_rate_limit_error_with_the_wait_and_headers(gateway: Gateway) -> None:
    key = limited_key(gateway, "limits-rpm", "--rpm", "1", header="x-ratelimit-limit-requests", value="1")
    client = gateway.client(key, max_retries=0)

    with pytest.raises(RateLimitError) as info:
        client.responses.create(model=MODEL, input="hi")

    err = info.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert isinstance(err.body, dict) and err.body.get("param") is None
    assert "requests per min (RPM)" in err.message and "Limit 1, Used 1, Requested 1" in err.message
    headers = err.response.headers
    wait_ms = float(headers["retry-after-ms"])
    assert 0 < wait_ms <= 60_000
    assert int(headers["retry-after"]) == math.ceil(wait_ms / 1000)
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
    assert headers["x-request-id"].startswith("req_")


def test_every_answer_carries_the_six_headers_decreasing(gateway: Gateway) -> None:
    # Slow refills (one request per 6 s, 10 tokens/s) so each call's spend shows.
    key = limited_key(
        gateway, "limits-headers", "--rpm", "10", "--tpm", "600",
        header="x-ratelimit-limit-tokens", value="600",
    )
    client = gateway.client(key, max_retries=0)

    seen: list[Any] = []
    for _ in range(3):
        raw = client.responses.with_raw_response.create(model=MODEL, input="hi", max_output_tokens=16)
        raw.parse()
        seen.append(raw.headers)
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=16, stream=True
    )
    chunks = list(stream.parse())
    assert chunks, "the stream delivered its chunks"
    seen.append(stream.headers)

    for headers in seen:
        for name in SIX:
            assert name in headers, f"{name} missing"
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-limit-tokens"] == "600"
        assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
        assert GO_DURATION.match(headers["x-ratelimit-reset-tokens"])
    requests_left = [int(h["x-ratelimit-remaining-requests"]) for h in seen]
    tokens_left = [int(h["x-ratelimit-remaining-tokens"]) for h in seen]
    assert requests_left == sorted(requests_left, reverse=True) and len(set(requests_left)) == len(seen)
    assert tokens_left == sorted(tokens_left, reverse=True) and len(set(tokens_left)) == len(seen)


def test_the_sdk_waits_the_retry_after_and_its_retry_gets_through(gateway: Gateway) -> None:
    # 30 a minute: a request frees up every 2 s.
    key = limited_key(gateway, "limits-retry", "--rpm", "30", header="x-ratelimit-limit-requests", value="30")
    # Spend until a refusal says the bucket has just emptied (at least 1.6 of the 2 s to
    # wait), so the SDK's first attempt below is refused too.
    for _ in range(200):
        status, headers = probe(gateway, key)
        if status == 429:
            wait_ms = float(headers["retry-after-ms"])
            assert 0 < wait_ms <= 2000
            if wait_ms >= 1600:
                break
    else:
        pytest.fail("30 RPM was never exhausted by 200 calls")

    client = gateway.client(key, max_retries=2)
    start = time.monotonic()
    raw = client.responses.with_raw_response.create(model=MODEL, input="hi")
    raw.parse()

    # The first attempt was refused; the SDK slept the retry-after tollgate sent and its
    # one retry was admitted (a retry sent too early would have been refused again).
    assert raw.retries_taken == 1
    assert time.monotonic() - start > 0.5
    assert raw.headers["x-ratelimit-limit-requests"] == "30"
