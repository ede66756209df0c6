"""Spend budgets as an official SDK sees them (SDK → tollgate serve → simulator).

A budget is set with `tollgate budgets set` on the running gateway's store; the gateway
applies it within a second. A call whose worst-case cost does not fit is refused with
429 `insufficient_quota` and `x-should-retry: false`, so the SDK — with its default two
retries — raises RateLimitError after exactly ONE HTTP attempt, counted both by the
client's transport and by the gateway's usage records.
"""

from __future__ import annotations

import time

import httpx2
import pytest
from openai import OpenAI, RateLimitError

from conftest import Gateway, http
from support import MODEL

APPLY_DEADLINE_S = 2.0
RECORD_DEADLINE_S = 5.0


def probe(gateway: Gateway, key: str) -> int:
    """One call of an unpriced model: 400 `model_not_priced` once a budget governs the
    key, 401 while the gateway does not know the key yet, else the simulator's answer."""
    status, body, _ = http(
        gateway.base_url + "/responses",
        "POST",
        {"model": "unpriced-model", "input": "x"},
        {"authorization": f"Bearer {key}"},
    )
    if status == 400:
        assert body["error"]["code"] == "model_not_priced", body
    return status


def requests_of(gateway: Gateway, key_id: str) -> int:
    rows = [r for r in gateway.data.usage("key") if r["group"] == key_id]
    return rows[0]["requests"] if rows else 0


def wait_for_records(gateway: Gateway, key_id: str, n: int) -> None:
    """Waits until the key's usage records number `n`, and asserts there are no more."""
    start = time.monotonic()
    while (seen := requests_of(gateway, key_id)) < n:
        assert time.monotonic() - start < RECORD_DEADLINE_S, f"{seen} of {n} records written"
    assert seen == n, f"{seen} records, expected {n}"


def test_a_spent_budget_is_insufficient_quota_after_one_attempt(gateway: Gateway) -> None:
    project = "budgets-sdk"
    key = gateway.data.create_key(project=project)
    # One micro-dollar a day: no call of gpt-4o fits.
    gateway.data.cli("budgets", "set", "--project", project, "--env", "dev", "--daily", "0.000001")
    # Probes the gateway attributed to the key (a 401 has no key on its record).
    probes = 0
    start = time.monotonic()
    while True:
        status = probe(gateway, key["key"])
        probes += status != 401
        if status == 400:
            break
        assert time.monotonic() - start < APPLY_DEADLINE_S, "budget not applied in time"
    wait_for_records(gateway, key["id"], probes)

    attempts: list[str] = []
    transport = httpx2.Client(timeout=30.0, event_hooks={"request": [lambda req: attempts.append(str(req.url))]})
    # The SDK's default: two retries for a 429 — unless the server says not to.
    client = OpenAI(base_url=gateway.base_url, api_key=key["key"], http_client=transport, max_retries=2)
    with pytest.raises(RateLimitError) as info:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=16)

    err = info.value
    assert err.status_code == 429
    assert err.code == "insufficient_quota"
    assert err.type == "insufficient_quota"
    assert isinstance(err.body, dict) and err.body.get("param") is None
    assert "daily budget of project budgets-sdk, env dev" in err.message
    assert "tollgate budgets set" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.response.headers
    assert len(attempts) == 1, attempts

    # The gateway saw one attempt too: one more usage record for the key.
    wait_for_records(gateway, key["id"], probes + 1)

    shown = gateway.data.cli("budgets", "show", "--project", project)
    assert "$0.000001" in shown and "day" in shown, shown
