"""Function-tool round trips through the official Python SDK, plain and streamed, Responses and Chat."""

from __future__ import annotations

import json
from typing import Any

from openai import OpenAI

from support import (
    MODEL,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    WEATHER_TOOL_CHAT,
    WEATHER_TOOL_RESPONSES,
    parse_weather_arguments,
)

# --- Responses ------------------------------------------------------------------------------


def test_responses_tool_round_trip(client: OpenAI) -> None:
    history: list[Any] = [{"role": "user", "content": WEATHER_QUESTION}]
    first = client.responses.create(model=MODEL, input=history, tools=[WEATHER_TOOL_RESPONSES])

    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id
    parse_weather_arguments(call.arguments)
    assert first.output_text == ""

    history += first.output
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_RESULT})
    second = client.responses.create(model=MODEL, input=history, tools=[WEATHER_TOOL_RESPONSES])

    assert second.status == "completed"
    assert not [item for item in second.output if item.type == "function_call"]
    assert second.output_text.strip() != ""


def test_responses_tool_round_trip_streamed(client: OpenAI) -> None:
    history: list[Any] = [{"role": "user", "content": WEATHER_QUESTION}]
    events = list(client.responses.create(model=MODEL, input=history, tools=[WEATHER_TOOL_RESPONSES], stream=True))

    assert events[0].type == "response.created"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert len(added) == 1
    assert added[0].item.name == "get_weather"
    arg_deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (args_done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert args_done.arguments == arg_deltas
    parse_weather_arguments(arg_deltas)

    assert events[-1].type == "response.completed"
    final = events[-1].response
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.arguments == arg_deltas
    assert call.call_id

    history += final.output
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_RESULT})
    answer = list(client.responses.create(model=MODEL, input=history, tools=[WEATHER_TOOL_RESPONSES], stream=True))

    text = "".join(e.delta for e in answer if e.type == "response.output_text.delta")
    assert text.strip() != ""
    assert not [e for e in answer if e.type.startswith("response.function_call_arguments")]
    assert answer[-1].type == "response.completed"
    assert answer[-1].response.output_text == text


# --- Chat Completions -----------------------------------------------------------------------


def test_chat_tool_round_trip(client: OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": WEATHER_QUESTION}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL_CHAT])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    parse_weather_arguments(call.function.arguments)

    messages.append(choice.message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": WEATHER_RESULT})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL_CHAT])

    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls
    assert (second.choices[0].message.content or "").strip() != ""


def test_chat_tool_round_trip_streamed(client: OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": WEATHER_QUESTION}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL_CHAT], stream=True))

    call_id, name, arguments = None, None, ""
    finish_reasons = []
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
            for tool_call in choice.delta.tool_calls or []:
                assert tool_call.index == 0
                if tool_call.id:
                    call_id = tool_call.id
                if tool_call.function and tool_call.function.name:
                    name = tool_call.function.name
                if tool_call.function and tool_call.function.arguments:
                    arguments += tool_call.function.arguments
    assert finish_reasons == ["tool_calls"]
    assert call_id and name == "get_weather"
    parse_weather_arguments(arguments)

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call_id, "content": WEATHER_RESULT})
    answer = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL_CHAT], stream=True))

    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text.strip() != ""
    assert not [c for c in answer if c.choices and c.choices[0].delta.tool_calls]
    assert [c.choices[0].finish_reason for c in answer if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_chat_tool_arguments_are_json(client: OpenAI) -> None:
    # tool_choice naming the function forces the call even without a hint in the prompt.
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello there."}],
        tools=[WEATHER_TOOL_CHAT],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments).keys() == {"city"}
