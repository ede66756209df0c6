"""Model routing and preflight as an official SDK sees them (SDK → tollgate serve → simulator).

Aliases resolve to the model that serves; a project's access list refuses other models
with NotFoundError (404 `model_not_found`) whose message lists the usable ones, and
filters `models.list()`; a request that cannot fit the context window is BadRequestError
with the numbers; schema errors name their path; `response_format` sent to
`/v1/responses` is translated to `text.format` with an `x-tollgate-warning` header.
Lists are set with `tollgate models allow` on the running gateway's store; the gateway
applies them within a second.
"""

from __future__ import annotations

import json
import time

import pytest
from openai import BadRequestError, NotFoundError

from conftest import Gateway, http

APPLY_DEADLINE_S = 2.0


def test_an_alias_is_served_by_its_model(gateway: Gateway, session_gateway) -> None:
    client = gateway.client(session_gateway.member["key"], max_retries=0)
    raw = client.responses.with_raw_response.create(model="smart", input="hello", max_output_tokens=20)
    assert raw.headers["x-tollgate-model"] == "gpt-4.1"
    response = raw.parse()
    assert response.model.startswith("gpt-4.1"), response.model

    chat = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert chat.model.startswith("gpt-4o-mini"), chat.model


def test_an_allow_list_refuses_other_models_listing_the_usable_ones(gateway: Gateway) -> None:
    key = gateway.data.create_key(project="routing-allow")["key"]
    gateway.data.cli("models", "allow", "--project", "routing-allow", "--env", "dev", "gpt-4o-mini")
    # Once the gateway has loaded the key and the list, gpt-4o is refused (probed with
    # fresh connections: a refused key's connection is not reused).
    start = time.monotonic()
    while http(gateway.base_url + "/models/gpt-4o", "GET", None, {"authorization": f"Bearer {key}"})[0] != 404:
        assert time.monotonic() - start < APPLY_DEADLINE_S, "the allow-list was not applied in time"
    client = gateway.client(key, max_retries=0)
    with pytest.raises(NotFoundError) as info:
        client.responses.create(model="gpt-4o", input="hi", max_output_tokens=16)
    err = info.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert "This key may use: gpt-4o-mini." in err.message, err.message

    # Through an alias: refused too, naming what it resolved to.
    with pytest.raises(NotFoundError) as info:
        client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert "(the alias of gpt-4.1)" in info.value.message

    # Allowed: the model itself and the alias of it.
    assert client.responses.create(model="fast", input="hi", max_output_tokens=16).model.startswith("gpt-4o-mini")
    ids = [m.id for m in client.models.list()]
    assert ids and all(i == "gpt-4o-mini" or i.startswith("gpt-4o-mini-2") for i in ids), ids
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_request_beyond_the_context_window_is_refused_with_the_numbers(gateway: Gateway, session_gateway) -> None:
    client = gateway.client(session_gateway.member["key"], max_retries=0)
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=200_000)
    err = info.value
    assert err.code == "context_length_exceeded"
    assert err.param == "input"
    assert "maximum context length is 128000 tokens" in err.message, err.message
    assert "200000 in the completion" in err.message, err.message


def test_a_schema_error_names_its_path(gateway: Gateway, session_gateway) -> None:
    client = gateway.client(session_gateway.member["key"], max_retries=0)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "additionalProperties": False,
        }},
        "required": ["name", "address"],
        "additionalProperties": False,
    }
    with pytest.raises(BadRequestError) as info:
        client.responses.create(
            model="gpt-4o-mini",
            input="a person",
            text={"format": {"type": "json_schema", "name": "person", "strict": True, "schema": schema}},
        )
    err = info.value
    assert err.code == "invalid_json_schema"
    assert err.param == "text.format.schema/properties/address"
    assert "Missing 'city'" in err.message, err.message


def test_response_format_on_responses_is_translated_with_a_warning(gateway: Gateway, session_gateway) -> None:
    client = gateway.client(session_gateway.member["key"], max_retries=0)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        input="a person",
        extra_body={"response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": schema},
        }},
    )
    assert "text.format" in raw.headers["x-tollgate-warning"]
    response = raw.parse()
    assert isinstance(json.loads(response.output_text)["name"], str)
