"""What only the gateway does, through the official Python SDK (SDK → tollgate serve → simulator).

The guide's two request templates, the errors tollgate decides itself (missing, unknown,
revoked key; viewer role; a project admin on the gateway-wide admin routes), upstream errors after
the gateway's retries, key revocation,
expiry, rotation with a grace period and suspension through the CLI while the server runs, stream fidelity against the simulator, and the
usage records a known set of calls leaves behind.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from openai import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OpenAI,
    PermissionDeniedError,
    RateLimitError,
)

from conftest import GATEWAY_UPSTREAM_ATTEMPTS, PROVIDER_KEY, Gateway, Mock, SessionGateway, header, start_gateway
from support import (
    LONG_PROMPT,
    MODEL,
    TICKET_PROMPT,
    TICKET_SCHEMA,
    WEATHER_QUESTION,
    WEATHER_TOOL_RESPONSES,
    parse_ticket,
)

ERROR_KEYS = {"message", "type", "param", "code"}
REVOCATION_DEADLINE_S = 1.0

log = logging.getLogger("tollgate.contract")


@pytest.fixture()
def sim(mock: Mock) -> Mock:
    mock.reset()
    return mock


@pytest.fixture(scope="module")
def member(session_gateway: SessionGateway) -> OpenAI:
    return session_gateway.gateway.client(session_gateway.member["key"])


# --- the guide's two templates ---------------------------------------------------------------


def test_template_concise_draft(sim: Mock, member: OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    instructions = "You are a concise assistant. Answer in at most three sentences."
    prompt = "Draft a reply to a customer asking when their order ships."
    caplog.set_level(logging.INFO, logger="tollgate.contract")

    response = member.responses.create(model=MODEL, instructions=instructions, input=prompt, max_output_tokens=300)
    usage = response.usage
    assert usage is not None
    log.info("draft usage: input=%d output=%d total=%d", usage.input_tokens, usage.output_tokens, usage.total_tokens)

    assert response.status == "completed"
    assert response.instructions == instructions
    assert response.max_output_tokens == 300
    assert response.output_text.strip() != ""
    assert 0 < usage.output_tokens <= 300
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert f"total={usage.total_tokens}" in caplog.text
    # The body reached the simulator unchanged.
    (record,) = sim.recorded("/v1/responses")
    assert record["body"] == {"model": MODEL, "instructions": instructions, "input": prompt, "max_output_tokens": 300}

    cut = member.responses.create(model=MODEL, instructions=instructions, input=LONG_PROMPT, max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and 0 < cut.usage.output_tokens <= 16


def test_template_ticket_classifier(sim: Mock, member: OpenAI) -> None:
    text_format = {"type": "json_schema", "name": "ticket_classification", "schema": TICKET_SCHEMA, "strict": True}

    response = member.responses.create(model=MODEL, input=TICKET_PROMPT, text={"format": text_format})

    assert response.status == "completed"
    ticket = parse_ticket(response.output_text)
    assert ticket.priority in ("low", "medium", "high")
    (record,) = sim.recorded("/v1/responses")
    assert record["body"]["text"]["format"] == text_format


# --- errors tollgate decides itself ------------------------------------------------------------


def test_unknown_key_is_authentication_error_and_not_retried(sim: Mock, gateway: Gateway) -> None:
    client = gateway.client("tg-dev-0000000000000000000000000000000", max_retries=2)

    with pytest.raises(AuthenticationError) as info:
        client.responses.create(model=MODEL, input="hi")
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert "tollgate keys create" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert err.request_id is not None and err.request_id.startswith("req_")
    assert sim.recorded() == [], "an unauthenticated call must not reach the upstream"


def test_missing_key_is_401_invalid_api_key(sim: Mock, gateway: Gateway) -> None:
    status, body = gateway.http("POST", "/v1/responses", {"model": MODEL, "input": "hi"})

    assert status == 401
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert sim.recorded() == []


def test_provider_key_is_not_accepted_by_the_gateway(sim: Mock, gateway: Gateway) -> None:
    # The provider key means nothing to the gateway: callers need a tollgate key.
    with pytest.raises(AuthenticationError):
        gateway.client(PROVIDER_KEY, max_retries=0).models.list()
    assert sim.recorded() == []


def test_viewer_key_is_permission_denied(sim: Mock, session_gateway: SessionGateway) -> None:
    viewer = session_gateway.gateway.client(session_gateway.viewer["key"], max_retries=2)

    with pytest.raises(PermissionDeniedError) as info:
        viewer.responses.create(model=MODEL, input="hi")
    err = info.value
    assert err.status_code == 403
    assert err.code == "permission_denied"
    assert err.type == "permission_error"
    assert err.response.headers["x-should-retry"] == "false"
    assert sim.recorded() == []


# --- upstream errors, after the gateway's retries ---------------------------------------------


def test_unknown_model_is_not_found_and_not_retried(sim: Mock, member: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        member.responses.create(model="gpt-does-not-exist", input="hi")
    err = info.value
    assert err.code == "model_not_found"
    assert "gpt-does-not-exist" in err.message
    headers = err.response.headers
    assert headers["x-request-id"].startswith("req_")
    upstream = sim.recorded("/v1/responses")
    assert [r["status"] for r in upstream] == [404]
    assert headers["x-upstream-request-id"].startswith("req_")
    assert headers["x-upstream-request-id"] != headers["x-request-id"]


def test_upstream_429_is_rate_limit_error_after_gateway_retries(sim: Mock, session_gateway: SessionGateway) -> None:
    client = session_gateway.gateway.client(session_gateway.member["key"], max_retries=0)

    with pytest.raises(RateLimitError) as info:
        client.responses.create(
            model=MODEL, input="hi", extra_headers={"x-sim-status": "429", "x-sim-retry-after-ms": "10"}
        )
    err = info.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    # The last upstream answer is relayed with its retry hint.
    assert err.response.headers["retry-after-ms"] == "10"
    assert [r["status"] for r in sim.recorded("/v1/responses")] == [429] * GATEWAY_UPSTREAM_ATTEMPTS


def test_upstream_429_with_sdk_retries_is_nine_attempts(sim: Mock, member: OpenAI) -> None:
    sim.queue_faults(count=100, status=429, retry_after_ms=10, path="/v1/chat/completions")

    with pytest.raises(RateLimitError):
        member.with_options(max_retries=2).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    # 3 SDK attempts x 3 gateway attempts.
    assert len(sim.recorded("/v1/chat/completions")) == 9


def test_insufficient_quota_is_not_retried_by_the_gateway(sim: Mock, session_gateway: SessionGateway) -> None:
    client = session_gateway.gateway.client(session_gateway.member["key"], max_retries=0)

    with pytest.raises(RateLimitError) as info:
        client.responses.create(
            model=MODEL,
            input="hi",
            extra_headers={"x-sim-status": "429", "x-sim-error-code": "insufficient_quota"},
        )
    assert info.value.code == "insufficient_quota"
    assert [r["status"] for r in sim.recorded("/v1/responses")] == [429]


# --- keys: revocation while the server runs ----------------------------------------------------


def calls_succeed(client: OpenAI) -> bool:
    """True if a call with this client succeeds, False on 401; anything else fails the test."""
    try:
        client.models.retrieve("gpt-4o")
    except AuthenticationError:
        return False
    return True


def poll_until(predicate: Any, deadline_s: float) -> float | None:
    """Polls `predicate` until it is true; returns the seconds it took, or None past the deadline."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            return None


def test_revoked_key_stops_working_within_one_second(session_gateway: SessionGateway) -> None:
    gateway = session_gateway.gateway
    key = session_gateway.revocable
    client = gateway.client(key["key"], max_retries=0)
    assert calls_succeed(client), "the key must work before it is revoked"

    gateway.data.revoke_key(key["id"])
    took = poll_until(lambda: not calls_succeed(client), REVOCATION_DEADLINE_S)

    assert took is not None, f"a revoked key still worked {REVOCATION_DEADLINE_S}s after `tollgate keys revoke`"
    with pytest.raises(AuthenticationError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.code == "invalid_api_key"
    # Other keys are unaffected.
    assert calls_succeed(gateway.client(session_gateway.member["key"], max_retries=0))


def test_key_created_while_running_works_within_one_second(gateway: Gateway) -> None:
    key = gateway.data.create_key(project="late", env="staging")
    client = gateway.client(key["key"], max_retries=0)

    took = poll_until(lambda: calls_succeed(client), REVOCATION_DEADLINE_S)

    assert took is not None, "a key created with `tollgate keys create` was not accepted within 1s"


# --- keys over their life: expiry, rotation with a grace period, suspension -----------------------


def test_expired_key_is_authentication_error_saying_how_to_rotate(gateway: Gateway) -> None:
    key = json.loads(
        gateway.data.cli(
            "keys", "create", "--project", "lifecycle", "--env", "dev", "--expires-in", "2s", "--json"
        )
    )
    client = gateway.client(key["key"], max_retries=0)
    assert poll_until(lambda: calls_succeed(client), REVOCATION_DEADLINE_S) is not None

    took = poll_until(lambda: not calls_succeed(client), 2.0 + REVOCATION_DEADLINE_S)

    assert took is not None, "a key still worked a second after it expired"
    with pytest.raises(AuthenticationError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.code == "invalid_api_key"
    assert "expired" in info.value.message
    assert f"tollgate keys rotate {key['id']}" in info.value.message


def test_rotated_key_works_through_its_grace_period_then_stops(gateway: Gateway) -> None:
    old = gateway.data.create_key(project="lifecycle")
    old_client = gateway.client(old["key"], max_retries=0)
    assert poll_until(lambda: calls_succeed(old_client), REVOCATION_DEADLINE_S) is not None

    new = json.loads(gateway.data.cli("keys", "rotate", old["id"], "--grace", "2s", "--json"))
    new_client = gateway.client(new["key"], max_retries=0)

    # The overlap: the successor is accepted within a second while the old key still works.
    assert poll_until(lambda: calls_succeed(new_client), REVOCATION_DEADLINE_S) is not None
    assert calls_succeed(old_client), "the old key must keep working during its grace period"
    took = poll_until(lambda: not calls_succeed(old_client), 2.0 + REVOCATION_DEADLINE_S)
    assert took is not None, "a rotated key still worked a second after its grace period"
    with pytest.raises(AuthenticationError) as info:
        old_client.responses.create(model=MODEL, input="hi")
    assert "rotated" in info.value.message and new["id"] in info.value.message
    assert calls_succeed(new_client)


def test_suspended_key_is_permission_denied_until_resumed(gateway: Gateway) -> None:
    key = gateway.data.create_key(project="lifecycle")
    client = gateway.client(key["key"], max_retries=0)
    assert poll_until(lambda: calls_succeed(client), REVOCATION_DEADLINE_S) is not None

    gateway.data.cli("keys", "suspend", key["id"], "--reason", "contract test")

    def refused() -> bool:
        try:
            client.models.retrieve("gpt-4o")
        except PermissionDeniedError as e:
            return e.code == "key_suspended"
        return False

    assert poll_until(refused, REVOCATION_DEADLINE_S) is not None, "a suspended key still worked after 1s"
    gateway.data.cli("keys", "resume", key["id"])

    def accepted() -> bool:
        try:
            client.models.retrieve("gpt-4o")
        except PermissionDeniedError:
            return False
        return True

    took = poll_until(accepted, REVOCATION_DEADLINE_S)
    assert took is not None, "a resumed key was still refused after 1s"


def test_admin_api_wrong_role_and_bad_input_through_the_sdk(gateway: Gateway) -> None:
    """The admin API speaks OpenAI's error shape, so the SDK's generic requests raise its usual
    classes: a project's admin is refused gateway-wide routes (403), a gateway admin's bad
    input is a 400 that changes nothing."""
    root = gateway.root_url
    project_admin = gateway.data.create_key(project="governed", role="admin")
    gateway_admin = gateway.data.create_key(project="_gateway", env="prod", role="admin")
    mine = gateway.client(project_admin["key"], max_retries=2)
    gw = gateway.client(gateway_admin["key"], max_retries=2)

    def known(client: OpenAI) -> bool:
        try:
            client.get(f"{root}/admin/v1/project", cast_to=object)
        except AuthenticationError:
            return False
        return True

    for client in (mine, gw):
        assert poll_until(lambda: known(client), REVOCATION_DEADLINE_S) is not None

    with pytest.raises(PermissionDeniedError) as denied:
        mine.post(f"{root}/admin/v1/projects", cast_to=object, body={"name": "sdk-made"})
    assert denied.value.status_code == 403
    assert denied.value.code == "permission_denied"
    assert denied.value.type == "permission_error"
    assert denied.value.response.headers["x-should-retry"] == "false"

    created = gw.post(f"{root}/admin/v1/projects", cast_to=object, body={"name": "sdk-made"})
    assert created["name"] == "sdk-made"
    for body in ({"name": "sdk-made"}, {"name": "_mine"}, {"name": "x" * 65}):
        with pytest.raises(BadRequestError) as bad:
            gw.post(f"{root}/admin/v1/projects", cast_to=object, body=body)
        assert bad.value.param == "name"
    listed = gw.get(f"{root}/admin/v1/projects", cast_to=object)
    names = [p["name"] for p in listed["data"]]
    assert names.count("sdk-made") == 1 and "_mine" not in names


# --- stream fidelity: through the gateway the SDK sees what it sees from the simulator ---------

VOLATILE_KEYS = {"id", "item_id", "call_id", "created", "created_at", "completed_at"}


def normalized(value: Any) -> Any:
    """A dumped SDK object without ids and timestamps (they differ on every call)."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def typed_events(stream: Any) -> list[dict[str, Any]]:
    return [{"class": type(event).__name__, **normalized(event.model_dump())} for event in stream]


def test_responses_stream_fidelity(mock: Mock, member: OpenAI) -> None:
    direct = mock.client()
    request: dict[str, Any] = {"model": MODEL, "input": LONG_PROMPT, "max_output_tokens": 120, "stream": True}

    expected = typed_events(direct.responses.create(**request))
    got = typed_events(member.responses.create(**request))

    assert len(expected) > 5
    assert [e["type"] for e in got] == [e["type"] for e in expected]
    assert got == expected


def test_responses_tool_stream_fidelity(mock: Mock, member: OpenAI) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "input": WEATHER_QUESTION,
        "tools": [WEATHER_TOOL_RESPONSES],
        "stream": True,
    }
    expected = typed_events(mock.client().responses.create(**request))
    got = typed_events(member.responses.create(**request))

    assert "response.function_call_arguments.delta" in [e["type"] for e in expected]
    assert got == expected


@pytest.mark.parametrize("include_usage", [False, True], ids=["without_usage", "with_usage"])
def test_chat_stream_fidelity(mock: Mock, member: OpenAI, include_usage: bool) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "stream": True,
    }
    if include_usage:
        request["stream_options"] = {"include_usage": True}

    expected = typed_events(mock.client().chat.completions.create(**request))
    got = typed_events(member.chat.completions.create(**request))

    assert len(expected) > 3
    assert got == expected
    assert (got[-1]["usage"] is not None) is include_usage
    assert all(chunk["usage"] is None for chunk in got[:-1])


RAW_IDS = re.compile(r'"(id|item_id|call_id)":"[^"]*"|"(created|created_at|completed_at)":\d+')


def raw_sse(client: OpenAI, path: str, body: dict[str, Any]) -> list[str]:
    """The stream's lines as sent, ids and timestamps blanked."""
    api = client.responses if path == "/responses" else client.chat.completions
    with api.with_streaming_response.create(**body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [RAW_IDS.sub(lambda m: f'"{m.group(1) or m.group(2)}":_', line) for line in response.iter_lines()]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/responses", {"model": MODEL, "input": "Say something about bridges.", "stream": True}),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        (
            "/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
    ],
    ids=["responses", "chat", "chat_with_usage"],
)
def test_stream_bytes_fidelity(mock: Mock, member: OpenAI, path: str, body: dict[str, Any]) -> None:
    expected = raw_sse(mock.client(), path, body)
    got = raw_sse(member, path, body)

    assert any(line.startswith("data: ") for line in expected)
    assert got == expected


# --- usage records ------------------------------------------------------------------------------


@pytest.fixture()
def usage_gateway(mock: Mock) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """A gateway of its own, so its usage records are exactly this test's calls."""
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-usage-"))
    gateway, (key,) = start_gateway(mock, workdir, "member")
    yield gateway, key
    gateway.close()
    shutil.rmtree(workdir, ignore_errors=True)


def test_usage_records_match_the_calls(mock: Mock, usage_gateway: tuple[Gateway, dict[str, str]]) -> None:
    gateway, key = usage_gateway
    client = gateway.client(key["key"], max_retries=0)
    calls = 0
    input_tokens = 0
    output_tokens = 0

    def count(inp: int, out: int) -> None:
        nonlocal calls, input_tokens, output_tokens
        calls += 1
        input_tokens += inp
        output_tokens += out

    r = client.responses.create(model=MODEL, input="Say something about bridges.", max_output_tokens=50)
    assert r.usage is not None
    count(r.usage.input_tokens, r.usage.output_tokens)

    events = list(client.responses.create(model=MODEL, input=LONG_PROMPT, stream=True))
    final = events[-1].response
    assert final.usage is not None
    count(final.usage.input_tokens, final.usage.output_tokens)

    messages = [{"role": "user", "content": "Draft a thank-you note."}]
    c = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert c.usage is not None
    count(c.usage.prompt_tokens, c.usage.completion_tokens)

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].usage is not None
    count(chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)

    # Without include_usage the caller sees no usage, but the gateway still accounts the
    # tokens; the simulator is deterministic, so ask it directly what they are.
    plain_messages = [{"role": "user", "content": LONG_PROMPT}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=plain_messages, stream=True))  # type: ignore[arg-type]
    assert all(chunk.usage is None for chunk in chunks)
    reference = list(
        mock.client().chat.completions.create(
            model=MODEL, messages=plain_messages, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )
    )[-1].usage
    assert reference is not None
    count(reference.prompt_tokens, reference.completion_tokens)

    e = client.embeddings.create(model="text-embedding-3-small", input="The quick brown fox")
    count(e.usage.prompt_tokens, 0)

    client.moderations.create(model="omni-moderation-latest", input="I love sunny days.")
    count(0, 0)

    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    count(0, 0)

    with pytest.raises(NotFoundError):
        client.responses.create(model="gpt-does-not-exist", input="hi")
    count(0, 0)
    errors = 1

    status = gateway.terminate()
    assert status == 0, f"tollgate serve exited {status} on SIGTERM; stderr:\n{gateway.stderr()}"

    by_key = gateway.data.usage("key")
    assert [row["group"] for row in by_key] == [key["id"]], by_key
    (row,) = by_key
    assert row["requests"] == calls
    assert row["errors"] == errors
    assert row["input_tokens"] == input_tokens
    assert row["output_tokens"] == output_tokens
    assert row["total_tokens"] == input_tokens + output_tokens

    by_model = gateway.data.usage("model")
    assert sum(r["requests"] for r in by_model) == calls
    assert sum(r["input_tokens"] for r in by_model) == input_tokens
    assert sum(r["output_tokens"] for r in by_model) == output_tokens


def test_error_bodies_have_openai_shape(gateway: Gateway, session_gateway: SessionGateway) -> None:
    auth = {"authorization": f"Bearer {session_gateway.member['key']}"}
    for method, path, expected in [
        ("GET", "/v1/nope", 404),
        ("POST", "/v1/files", 404),
    ]:
        status, body = gateway.http(method, path, headers=auth)
        assert status == expected, (method, path, body)
        assert set(body["error"]) == ERROR_KEYS
        assert body["error"]["message"].startswith(f"Invalid URL ({method} {path})")

    status, body = gateway.http("GET", "/healthz")
    assert status == 200


def test_api_status_error_carries_gateway_request_id(sim: Mock, member: OpenAI) -> None:
    sim.queue_faults(count=GATEWAY_UPSTREAM_ATTEMPTS, status=503, retry_after_ms=10)
    with pytest.raises(APIStatusError) as info:
        member.with_options(max_retries=0).responses.create(model=MODEL, input="hi")
    assert info.value.status_code == 503
    assert info.value.request_id is not None and info.value.request_id.startswith("req_")
    assert [r["status"] for r in sim.recorded("/v1/responses")] == [503] * GATEWAY_UPSTREAM_ATTEMPTS


# --- priority lanes -----------------------------------------------------------------------------


def test_batch_priority_header_is_served_and_recorded(mock: Mock, usage_gateway: tuple[Gateway, dict[str, str]]) -> None:
    """`extra_headers={"x-tollgate-priority": "batch"}` runs the call in the batch lane: it is
    answered as usual, the header never reaches the upstream, and the usage record says
    `batch`; without the header the key's default (interactive) applies; a bad value is a
    400 naming the header, which the SDK does not retry."""
    gateway, key = usage_gateway
    client = gateway.client(key["key"])
    batch = client.responses.create(
        model=MODEL, input="Summarise a bridge.", max_output_tokens=16,
        extra_headers={"x-tollgate-priority": "batch"},
    )
    assert batch.output_text
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}],  # type: ignore[list-item]
    )
    assert plain.choices[0].message.content
    before = len(mock.recorded())
    with pytest.raises(BadRequestError) as bad:
        client.responses.create(model=MODEL, input="hi", extra_headers={"x-tollgate-priority": "urgent"})
    assert bad.value.param == "x-tollgate-priority"
    assert "`batch` or `interactive`" in bad.value.message
    assert len(mock.recorded()) == before, "a refused call never goes upstream"
    assert all(header(r, "x-tollgate-priority") is None for r in mock.recorded())

    status = gateway.terminate()
    assert status == 0, f"tollgate serve exited {status} on SIGTERM; stderr:\n{gateway.stderr()}"
    with sqlite3.connect(gateway.data.path / "tollgate.db") as db:
        rows = db.execute("SELECT endpoint, status, lane FROM usage ORDER BY id").fetchall()
    assert rows == [
        ("/v1/responses", 200, "batch"),
        ("/v1/chat/completions", 200, "interactive"),
        ("/v1/responses", 400, None),
    ], rows
