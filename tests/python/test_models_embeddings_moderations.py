"""Models, embeddings (SDK default base64 on the wire) and moderations through the official Python SDK."""

from __future__ import annotations

import base64
import json
import math
import struct

import pytest
from openai import NotFoundError, OpenAI

EMBEDDING_MODEL = "text-embedding-3-small"


def test_models_list(client: OpenAI) -> None:
    models = list(client.models.list())

    ids = {m.id for m in models}
    assert {"gpt-4o", "gpt-4o-2024-08-06", "text-embedding-3-small", "omni-moderation-latest"} <= ids
    assert len(ids) == len(models), "duplicate model ids"
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models)


def test_models_retrieve(client: OpenAI) -> None:
    model = client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o"
    assert model.object == "model"
    assert model.owned_by


def test_models_retrieve_unknown(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_embeddings_default_base64(sim, client: OpenAI) -> None:
    result = client.embeddings.create(model=EMBEDDING_MODEL, input="The quick brown fox")

    (record,) = sim.recorded("/v1/embeddings")
    assert record["body"]["encoding_format"] == "base64", "the SDK asks for base64 unless told otherwise"
    assert result.object == "list"
    assert result.model.startswith(EMBEDDING_MODEL)
    (item,) = result.data
    assert item.index == 0
    vector = item.embedding
    assert len(vector) == 1536
    assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens


def test_embeddings_base64_on_the_wire(client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="The quick brown fox")

    wire = json.loads(raw.text)["data"][0]["embedding"]
    assert isinstance(wire, str), "asked for base64, the answer must be a base64 string"
    floats = struct.unpack("<1536f", base64.b64decode(wire))
    assert list(floats) == raw.parse().data[0].embedding


def test_embeddings_stable_per_input(client: OpenAI) -> None:
    a1 = client.embeddings.create(model=EMBEDDING_MODEL, input="tollgate").data[0].embedding
    a2 = client.embeddings.create(model=EMBEDDING_MODEL, input="tollgate").data[0].embedding
    b = client.embeddings.create(model=EMBEDDING_MODEL, input="a different sentence").data[0].embedding

    assert a1 == a2
    assert a1 != b


def test_embeddings_float_matches_base64(client: OpenAI) -> None:
    as_base64 = client.embeddings.create(model=EMBEDDING_MODEL, input="same text").data[0].embedding
    as_float = client.embeddings.create(model=EMBEDDING_MODEL, input="same text", encoding_format="float").data[0].embedding

    assert len(as_float) == len(as_base64) == 1536
    # base64 carries float32; the float answer may carry more digits of the same values.
    assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(as_float, as_base64))


def test_embeddings_batch(client: OpenAI) -> None:
    result = client.embeddings.create(model=EMBEDDING_MODEL, input=["first", "second", "first"])

    assert [d.index for d in result.data] == [0, 1, 2]
    assert result.data[0].embedding == result.data[2].embedding
    assert result.data[0].embedding != result.data[1].embedding


def test_moderations_benign(client: OpenAI) -> None:
    result = client.moderations.create(model="omni-moderation-latest", input="I love sunny days at the beach.")

    assert result.id.startswith("modr-")
    (verdict,) = result.results
    assert verdict.flagged is False
    assert not any(verdict.categories.model_dump(by_alias=True).values())


def test_moderations_flagged(client: OpenAI) -> None:
    result = client.moderations.create(model="omni-moderation-latest", input="I will kill you")

    (verdict,) = result.results
    assert verdict.flagged is True
    assert verdict.categories.violence is True
    assert verdict.category_scores.violence > 0.5
    categories = verdict.categories.model_dump(by_alias=True)
    assert "self-harm/intent" in categories and "illicit/violent" in categories
