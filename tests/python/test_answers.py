"""Structured answers validated by the gateway, as an official SDK sees them
(SDK → tollgate serve → simulator). The session gateway validates the answers of the
project "answers" (`[answers] validate_projects`, on_invalid = retry): an answer that
does not match its schema is asked again once; if the second one fails too, the SDK
gets InternalServerError (502 `invalid_structured_output`) naming the failing path,
and does not retry it on its own (`x-should-retry: false`).
"""

from __future__ import annotations

import json
import time

import pytest
from openai import InternalServerError

from conftest import Gateway, Mock, http

APPLY_DEADLINE_S = 2.0

PERSON = {
    "type": "json_schema",
    "name": "person",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}


def answers_key(gateway: Gateway) -> str:
    key = gateway.data.create_key(project="answers")["key"]
    start = time.monotonic()
    while http(gateway.base_url + "/models", "GET", None, {"authorization": f"Bearer {key}"})[0] != 200:
        assert time.monotonic() - start < APPLY_DEADLINE_S, "the key was not loaded in time"
    return key


def test_a_structured_answer_that_breaks_its_schema_is_retried_once_then_refused(
    gateway: Gateway, mock: Mock
) -> None:
    client = gateway.client(answers_key(gateway))
    mock.reset()

    ok = client.responses.create(model="gpt-4o-mini", input="Who wrote the first program?", text={"format": PERSON})
    person = json.loads(ok.output_text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)

    # Spoiled once, then good: the SDK sees only the good answer.
    mock.reset()
    mock.queue_faults(count=1, invalid_output=True)
    ok = client.responses.create(model="gpt-4o-mini", input="Who wrote the first program?", text={"format": PERSON})
    assert isinstance(json.loads(ok.output_text)["name"], str)
    assert len(mock.recorded("/v1/responses")) == 2

    # Spoiled every time: refused after one retry, and the SDK does not retry (its
    # default max_retries is 2).
    mock.reset()
    with pytest.raises(InternalServerError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Who wrote the first program?"}],
            response_format={"type": "json_schema", "json_schema": {k: v for k, v in PERSON.items() if k != "type"}},
            extra_headers={"x-sim-invalid-output": "true"},
        )
    err = info.value
    assert err.status_code == 502
    assert err.code == "invalid_structured_output"
    assert "at /name" in err.message, err.message
    assert len(mock.recorded("/v1/chat/completions")) == 2
