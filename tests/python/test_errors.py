"""Error classes of the official Python SDK, and the SDK's own retries, against both targets.

Through the gateway, an upstream error that the gateway retries costs
`target.upstream_attempts` simulator requests per SDK attempt (the gateway's own retries).
"""

from __future__ import annotations

import pytest
from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI, RateLimitError

from conftest import Mock, Target, header
from support import MODEL

ERROR_KEYS = {"message", "type", "param", "code"}


def test_authentication_error_for_wrong_key(target: Target) -> None:
    assert target.client().models.retrieve("gpt-4o").id == "gpt-4o"

    with pytest.raises(AuthenticationError) as info:
        target.client(api_key="wrong-key").responses.create(model=MODEL, input="hi")
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert target.api_key not in err.message
    assert err.request_id is not None and err.request_id.startswith("req_")


def test_missing_key_is_401(sim: Mock, target: Target) -> None:
    status, body = target.http("POST", "/v1/responses", {"model": MODEL, "input": "hi"})

    assert status == 401
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["type"] == "invalid_request_error"
    if target.name == "mock":
        assert body["error"]["code"] is None
    else:
        # The gateway answers itself, and names the fix; the simulator never sees the call.
        assert body["error"]["code"] == "invalid_api_key"
        assert "tollgate keys create" in body["error"]["message"]
        assert sim.recorded() == []


def test_not_found_for_unknown_model(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        client.responses.create(model="gpt-does-not-exist", input="hi")
    assert info.value.code == "model_not_found"
    assert "gpt-does-not-exist" in info.value.message

    with pytest.raises(NotFoundError) as chat_info:
        client.chat.completions.create(model="gpt-does-not-exist", messages=[{"role": "user", "content": "hi"}])
    assert chat_info.value.code == "model_not_found"


def test_bad_request_for_response_format_on_responses(sim: Mock, target: Target) -> None:
    client = target.client()
    if target.name == "gateway":
        # The gateway moves it to text.format (preflight.response_format_on_responses) and says so.
        raw = client.responses.with_raw_response.create(
            model=MODEL, input="hi", extra_body={"response_format": {"type": "json_object"}}
        )
        assert "text.format" in raw.headers["x-tollgate-warning"]
        assert raw.parse().status == "completed"
        sent = sim.recorded("/v1/responses")[-1]["body"]
        assert "response_format" not in sent and sent["text"]["format"] == {"type": "json_object"}
        return
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", extra_body={"response_format": {"type": "json_object"}})
    err = info.value
    assert err.status_code == 400
    assert err.code == "unsupported_parameter"
    assert err.param == "response_format"
    assert "text.format" in err.message


def test_bad_request_for_unknown_parameter(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", extra_body={"frobnicate": True})
    assert info.value.code == "unknown_parameter"
    assert info.value.param == "frobnicate"


def test_unknown_path_is_404(target: Target) -> None:
    status, body = target.http("GET", "/v1/nope", headers={"authorization": f"Bearer {target.api_key}"})

    assert status == 404
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["message"].startswith("Invalid URL (GET /v1/nope)")


def test_rate_limit_error_after_sdk_retries_queued_faults(sim: Mock, target: Target) -> None:
    per_call = target.upstream_attempts
    sim.queue_faults(count=3 * per_call, status=429, retry_after_ms=10, path="/v1/responses")
    client = target.client(max_retries=2)

    with pytest.raises(RateLimitError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"

    # 3 SDK attempts, each costing `per_call` simulator requests.
    attempts = sim.recorded("/v1/responses")
    assert [a["status"] for a in attempts] == [429] * (3 * per_call)
    assert [header(a, "x-stainless-retry-count") for a in attempts] == [
        str(n) for n in range(3) for _ in range(per_call)
    ]

    # The queue is used up: the next request goes through.
    assert client.responses.create(model=MODEL, input="hi").status == "completed"
    assert len(sim.recorded("/v1/responses")) == 3 * per_call + 1


def test_rate_limit_error_after_sdk_retries_header_fault(sim: Mock, target: Target) -> None:
    client = target.client(max_retries=2)

    with pytest.raises(RateLimitError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "10"},
        )
    attempts = sim.recorded("/v1/chat/completions")
    # Through the gateway: 3 SDK attempts x 3 gateway attempts = 9 simulator requests.
    assert [a["status"] for a in attempts] == [429] * (3 * target.upstream_attempts)


def test_server_error_then_success_is_retried(sim: Mock, target: Target) -> None:
    sim.queue_faults(count=1, status=503, retry_after_ms=10)
    client = target.client(max_retries=2)

    response = client.responses.create(model=MODEL, input="hi")

    assert response.status == "completed"
    attempts = sim.recorded("/v1/responses")
    assert [a["status"] for a in attempts] == [503, 200]
    # Directly the SDK retried; through the gateway the gateway did, and the SDK saw one 200.
    expected_retry_counts = ["0", "1"] if target.name == "mock" else ["0", "0"]
    assert [header(a, "x-stainless-retry-count") for a in attempts] == expected_retry_counts


def test_no_retry_on_bad_request(sim: Mock, client: OpenAI) -> None:
    with pytest.raises(BadRequestError):
        client.responses.create(model=MODEL, input="hi", extra_body={"frobnicate": True})
    assert len(sim.recorded("/v1/responses")) == 1
