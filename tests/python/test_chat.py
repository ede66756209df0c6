"""Chat Completions through the official Python SDK: create, stream with and without usage, parse."""

from __future__ import annotations

from openai import OpenAI

from support import LONG_PROMPT, MODEL, TICKET_PROMPT, Ticket, parse_ticket


def test_create(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Draft a two-sentence reply thanking a customer for their order."},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion._request_id is not None and completion._request_id.startswith("req_")
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert (choice.message.content or "").strip() != ""
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_create_cut_by_max_completion_tokens(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG_PROMPT}], max_completion_tokens=5
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 5


def test_stream_with_include_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": LONG_PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *choice_chunks, usage_chunk = chunks
    assert all(len(c.choices) == 1 and c.usage is None for c in choice_chunks)
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    assert text.strip() != ""
    assert [c.choices[0].finish_reason for c in choice_chunks if c.choices[0].finish_reason] == ["stop"]
    assert choice_chunks[-1].choices[0].finish_reason == "stop"

    assert usage_chunk.choices == []
    usage = usage_chunk.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_without_include_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": LONG_PROMPT}], stream=True)
    )

    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_parse_with_pydantic_response_format(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": TICKET_PROMPT}], response_format=Ticket
    )

    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Ticket)
    assert message.parsed == parse_ticket(message.content or "")
