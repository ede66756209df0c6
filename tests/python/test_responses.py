"""Responses API through the official Python SDK: create, json_schema, streaming, parse helpers."""

from __future__ import annotations

import re

from openai import OpenAI
from openai.types.responses import Response

from support import LONG_PROMPT, MODEL, TICKET_PROMPT, TICKET_SCHEMA, Ticket, parse_ticket


def assert_usage_adds_up(response: Response) -> None:
    usage = response.usage
    assert usage is not None, "response has no usage"
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens >= 0


def test_create_text(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL, input=LONG_PROMPT, max_output_tokens=2000)

    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response._request_id is not None and response._request_id.startswith("req_")
    assert response.status == "completed"
    assert response.incomplete_details is None
    message = response.output[0]
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.output_text.strip() != ""
    assert_usage_adds_up(response)
    assert response.usage is not None and response.usage.output_tokens <= 2000


def test_create_is_deterministic(client: OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="Say something about bridges.")
    second = client.responses.create(model=MODEL, input="Say something about bridges.")
    assert first.output_text == second.output_text
    assert first.usage == second.usage


def test_create_cut_by_max_output_tokens(client: OpenAI) -> None:
    full = client.responses.create(model=MODEL, input=LONG_PROMPT)
    assert full.usage is not None and full.usage.output_tokens > 16, "answer too short to test the cut"

    cut = client.responses.create(model=MODEL, input=LONG_PROMPT, max_output_tokens=16)

    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text.strip() != ""
    assert len(cut.output_text) < len(full.output_text)
    assert cut.usage is not None and 0 < cut.usage.output_tokens <= 16
    assert_usage_adds_up(cut)


def test_create_json_schema(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=TICKET_PROMPT,
        text={"format": {"type": "json_schema", "name": "ticket_classification", "schema": TICKET_SCHEMA, "strict": True}},
    )

    assert response.status == "completed"
    parse_ticket(response.output_text)
    assert_usage_adds_up(response)


def test_stream_typed_events(client: OpenAI) -> None:
    stream = client.responses.create(model=MODEL, input=LONG_PROMPT, stream=True)
    events = list(stream)

    assert events, "stream yielded no events"
    assert events[0].type == "response.created"
    assert events[0].response.status == "in_progress"
    assert events[1].type == "response.in_progress"
    assert [e.sequence_number for e in events] == list(range(len(events)))

    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "expected the text in several deltas"
    text = "".join(deltas)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == text

    last = events[-1]
    assert last.type == "response.completed"
    assert [e.type for e in events].count("response.completed") == 1
    final = last.response
    assert final.status == "completed"
    assert final.output_text == text
    assert_usage_adds_up(final)


def test_stream_helper_with_text_format(client: OpenAI) -> None:
    deltas: list[str] = []
    with client.responses.stream(model=MODEL, input=TICKET_PROMPT, text_format=Ticket) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()

    assert deltas
    assert isinstance(final.output_parsed, Ticket)
    assert final.output_parsed == parse_ticket("".join(deltas))
    assert_usage_adds_up(final)


def test_parse_with_pydantic_text_format(sim, client: OpenAI) -> None:
    response = client.responses.parse(model=MODEL, input=TICKET_PROMPT, text_format=Ticket)

    assert isinstance(response.output_parsed, Ticket)
    assert response.output_parsed == parse_ticket(response.output_text)
    # The helper turns the Pydantic model into a strict json_schema text.format on the wire.
    (record,) = sim.recorded("/v1/responses")
    fmt = record["body"]["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["strict"] is True


def test_raw_response_headers(client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model=MODEL, input="hi")

    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["openai-version"] == "2020-10-01"
    assert int(raw.headers["openai-processing-ms"]) >= 0
    for kind in ("requests", "tokens"):
        assert int(raw.headers[f"x-ratelimit-limit-{kind}"]) > 0
        assert int(raw.headers[f"x-ratelimit-remaining-{kind}"]) >= 0
        assert re.fullmatch(r"(\d+h)?(\d+m)?([\d.]+m?s)?", raw.headers[f"x-ratelimit-reset-{kind}"])
    assert raw.parse().status == "completed"
