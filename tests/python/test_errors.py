"""Error classes of the official Python SDK against the mock, and the SDK's own retries."""

from __future__ import annotations

from typing import Iterator

import pytest
from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI, RateLimitError

from conftest import Mock, header
from support import MODEL

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def keyed_mock() -> Iterator[Mock]:
    """A second mock that accepts only one API key."""
    m = Mock("--api-key", "good-key")
    yield m
    m.close()


def test_authentication_error_for_wrong_key(keyed_mock: Mock) -> None:
    assert keyed_mock.client(api_key="good-key").models.retrieve("gpt-4o").id == "gpt-4o"

    with pytest.raises(AuthenticationError) as info:
        keyed_mock.client(api_key="wrong-key").responses.create(model=MODEL, input="hi")
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert "good-key" not in err.message
    assert err.request_id is not None and err.request_id.startswith("req_")


def test_missing_key_is_401(mock: Mock) -> None:
    status, body = mock.http("POST", "/v1/responses", {"model": MODEL, "input": "hi"})

    assert status == 401
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] is None
    assert body["error"]["type"] == "invalid_request_error"


def test_not_found_for_unknown_model(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        client.responses.create(model="gpt-does-not-exist", input="hi")
    assert info.value.code == "model_not_found"
    assert "gpt-does-not-exist" in info.value.message

    with pytest.raises(NotFoundError) as chat_info:
        client.chat.completions.create(model="gpt-does-not-exist", messages=[{"role": "user", "content": "hi"}])
    assert chat_info.value.code == "model_not_found"


def test_bad_request_for_response_format_on_responses(client: OpenAI) -> None:
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


def test_unknown_path_is_404(mock: Mock) -> None:
    status, body = mock.http("GET", "/v1/nope", headers={"authorization": "Bearer sk-test"})

    assert status == 404
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["message"].startswith("Invalid URL (GET /v1/nope)")


def test_rate_limit_error_after_sdk_retries_queued_faults(sim: Mock) -> None:
    sim.queue_faults(count=3, status=429, retry_after_ms=10, path="/v1/responses")
    client = sim.client(max_retries=2)

    with pytest.raises(RateLimitError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"

    attempts = sim.recorded("/v1/responses")
    assert len(attempts) == 3
    assert [a["status"] for a in attempts] == [429, 429, 429]
    assert [header(a, "x-stainless-retry-count") for a in attempts] == ["0", "1", "2"]

    # The queue is used up: the next request goes through.
    assert client.responses.create(model=MODEL, input="hi").status == "completed"
    assert len(sim.recorded("/v1/responses")) == 4


def test_rate_limit_error_after_sdk_retries_header_fault(sim: Mock) -> None:
    client = sim.client(max_retries=2)

    with pytest.raises(RateLimitError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "10"},
        )
    attempts = sim.recorded("/v1/chat/completions")
    assert [a["status"] for a in attempts] == [429, 429, 429]


def test_server_error_then_success_is_retried(sim: Mock) -> None:
    sim.queue_faults(count=1, status=503, retry_after_ms=10)
    client = sim.client(max_retries=2)

    response = client.responses.create(model=MODEL, input="hi")

    assert response.status == "completed"
    assert [a["status"] for a in sim.recorded("/v1/responses")] == [503, 200]


def test_no_retry_on_bad_request(sim: Mock, client: OpenAI) -> None:
    with pytest.raises(BadRequestError):
        client.responses.create(model=MODEL, input="hi", extra_body={"frobnicate": True})
    assert len(sim.recorded("/v1/responses")) == 1
