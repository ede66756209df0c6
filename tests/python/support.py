"""Shared request shapes for the contract tests: the helpdesk classifier and the weather tool."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

MODEL = "gpt-4o"

LONG_PROMPT = (
    "Explain in several detailed paragraphs how a toll gate on a motorway works: how vehicles are "
    "detected, how the fee is computed, how payment is taken, and what happens when a payment fails."
)

TICKET_PROMPT = "Classify this helpdesk ticket: 'I was charged twice for my subscription this month.'"


class Ticket(BaseModel):
    """The helpdesk classifier's answer."""

    model_config = ConfigDict(extra="forbid")

    category: str
    priority: Literal["low", "medium", "high"]
    needs_human: bool


TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string"},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "needs_human": {"type": "boolean"},
    },
    "required": ["category", "priority", "needs_human"],
    "additionalProperties": False,
}

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
    "required": ["city"],
    "additionalProperties": False,
}

# Responses API function tools are flat ...
WEATHER_TOOL_RESPONSES: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}

# ... Chat Completions nests them under "function".
WEATHER_TOOL_CHAT: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}

WEATHER_QUESTION = "What is the weather in Paris right now?"
WEATHER_RESULT = json.dumps({"city": "Paris", "temperature_c": 18, "conditions": "light rain"})


def parse_ticket(text: str) -> Ticket:
    """Parses JSON text and checks it against the classifier schema (types, enum, no extra keys)."""
    data = json.loads(text)
    assert isinstance(data, dict), data
    assert set(data) == {"category", "priority", "needs_human"}, data
    return Ticket.model_validate(data, strict=True)


def parse_weather_arguments(arguments: str) -> dict[str, Any]:
    """Parses a get_weather call's JSON arguments and checks them against its parameter schema."""
    args = json.loads(arguments)
    assert isinstance(args, dict), args
    assert set(args) == {"city"}, args
    assert isinstance(args["city"], str), args
    return args
