"""The response cache through the official Python SDK (SDK → tollgate serve → simulator).

Each call asks for the cache with `extra_headers={"x-tollgate-cache": ...}` and reads
what tollgate did from the `x-tollgate-cache` response header (`with_raw_response`): a
miss then a hit (the simulator saw one call, the answer is the stored one), `refresh`
(a new upstream call that replaces the entry), for plain and streamed Chat Completions
and Responses calls — a streamed hit is a stream the SDK reads like any other. Two keys
of different projects never share an answer, and a bad header value is a
BadRequestError naming the header.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from openai import BadRequestError, OpenAI

from conftest import Gateway, Mock
from support import MODEL

ON = {"x-tollgate-cache": "on"}
REFRESH = {"x-tollgate-cache": "refresh"}
KEY_DEADLINE_S = 2.0


def marker() -> str:
    return f"cache-{uuid.uuid4().hex}"


def upstream_calls(sim: Mock, path: str, mark: str) -> int:
    """Requests the simulator received on `path` whose body carries `mark`."""
    return sum(1 for r in sim.recorded(path) if mark in json.dumps(r["body"]))


def client_for(gateway: Gateway, project: str) -> OpenAI:
    """A client with a new key of `project`, once the running gateway accepts it."""
    client = gateway.client(gateway.data.create_key(project=project)["key"], max_retries=0)
    start = time.monotonic()
    while True:
        try:
            client.models.list()
            return client
        except Exception:  # noqa: BLE001 - not accepted yet
            assert time.monotonic() - start < KEY_DEADLINE_S, f"{project}: key not accepted in time"


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> OpenAI:
    return client_for(gateway, "cache-contract")


def chat(client: OpenAI, mark: str, headers: dict[str, str], **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Say hello ({mark})"}],
        extra_headers=headers,
        **kw,
    )


def respond(client: OpenAI, mark: str, headers: dict[str, str], **kw: Any) -> Any:
    return client.responses.with_raw_response.create(
        model=MODEL, input=f"Say hello ({mark})", extra_headers=headers, **kw
    )


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_plain_calls_miss_then_hit_and_refresh_replaces(client: OpenAI, gateway: Gateway, endpoint: str) -> None:
    call, path = (chat, "/v1/chat/completions") if endpoint == "chat" else (respond, "/v1/responses")
    mark = marker()

    first = call(client, mark, ON)
    second = call(client, mark, ON)

    assert first.headers["x-tollgate-cache"] == "miss"
    assert second.headers["x-tollgate-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert a.id == b.id, "the hit is the stored answer"
    assert a.model_dump() == b.model_dump()
    assert upstream_calls(gateway.sim, path, mark) == 1

    refreshed = call(client, mark, REFRESH)
    again = call(client, mark, ON)

    assert refreshed.headers["x-tollgate-cache"] == "refresh"
    assert refreshed.parse().id != a.id
    assert again.headers["x-tollgate-cache"] == "hit"
    assert again.parse().id == refreshed.parse().id, "refresh replaced the stored answer"
    assert upstream_calls(gateway.sim, path, mark) == 2


def chat_stream_text(raw: Any) -> tuple[str, list[str]]:
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.id for c in chunks]


def responses_stream_text(raw: Any) -> tuple[str, list[str]]:
    events = list(raw.parse())
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed"
    return text, [events[-1].response.id]


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_streamed_calls_miss_then_hit_replayed_as_a_stream(client: OpenAI, gateway: Gateway, endpoint: str) -> None:
    if endpoint == "chat":
        call, path, read = chat, "/v1/chat/completions", chat_stream_text
    else:
        call, path, read = respond, "/v1/responses", responses_stream_text
    mark = marker()

    first = call(client, mark, ON, stream=True)
    text, ids = read(first)
    second = call(client, mark, ON, stream=True)
    replay, replay_ids = read(second)

    assert first.headers["x-tollgate-cache"] == "miss"
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert text and replay == text
    assert replay_ids == ids
    assert upstream_calls(gateway.sim, path, mark) == 1

    refreshed = call(client, mark, REFRESH, stream=True)
    assert refreshed.headers["x-tollgate-cache"] == "refresh"
    read(refreshed)
    # The plain request is another entry: a miss.
    plain = call(client, mark, ON)
    assert plain.headers["x-tollgate-cache"] == "miss"
    plain.parse()
    assert upstream_calls(gateway.sim, path, mark) == 3


def test_two_projects_never_share_an_answer(gateway: Gateway) -> None:
    shop, blog = client_for(gateway, "cache-shop"), client_for(gateway, "cache-blog")
    mark = marker()

    a = respond(shop, mark, ON)
    b = respond(blog, mark, ON)

    assert (a.headers["x-tollgate-cache"], b.headers["x-tollgate-cache"]) == ("miss", "miss")
    assert a.parse().id != b.parse().id
    assert upstream_calls(gateway.sim, "/v1/responses", mark) == 2
    a_hit, b_hit = respond(shop, mark, ON), respond(blog, mark, ON)
    assert (a_hit.headers["x-tollgate-cache"], b_hit.headers["x-tollgate-cache"]) == ("hit", "hit")
    assert (a_hit.parse().id, b_hit.parse().id) == (a.parse().id, b.parse().id)
    assert upstream_calls(gateway.sim, "/v1/responses", mark) == 2


def test_a_bad_header_value_is_bad_request_naming_the_header(client: OpenAI, gateway: Gateway) -> None:
    mark = marker()
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model=MODEL, input=mark, extra_headers={"x-tollgate-cache": "always"})
    assert info.value.param == "x-tollgate-cache"
    assert "`on`, `off` or `refresh`" in info.value.message
    assert upstream_calls(gateway.sim, "/v1/responses", mark) == 0
