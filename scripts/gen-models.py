#!/usr/bin/env python3
"""Generate crates/simulator/data/models.json from OpenAI's OpenAPI spec.

The simulator's default model list is every model id that the spec enumerates in
the component schemas `ModelIdsShared` and `ModelIdsResponses` (following `$ref`
between component schemas), plus the embedding and moderation models, which the
spec does not enumerate there.

Python 3 standard library only: the spec is YAML, and PyYAML is not assumed, so
this script reads just enough of the YAML text. It relies on the spec being in
block style with a fixed indentation step, which is how openai-openapi writes it:

    components:
      schemas:
        ModelIdsShared:
          anyOf:
            - type: string
              enum:
                - gpt-5.4

Within the block of a component schema it collects the items of every `enum:`
list (block or flow style) and follows every `$ref: "#/components/schemas/X"`.
It fails loudly rather than guess when the structure is not what it expects.

Usage:
    scripts/gen-models.py [--spec PATH] [--out PATH] [--check]

Defaults: --spec ../shared/openai-openapi/openapi.yaml relative to the
repository root (or $TOLLGATE_OPENAPI_SPEC), --out
crates/simulator/data/models.json. With --check, exit 1 if the output file is
not up to date instead of writing it.
"""

import argparse
import calendar
import json
import os
import re
import sys

ROOT_SCHEMAS = ["ModelIdsShared", "ModelIdsResponses"]

# Models served by /v1/embeddings and /v1/moderations. The spec only lists these
# in descriptions and examples, not in an enum, so they are named here.
EXTRA_MODELS = [
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "omni-moderation-latest",
    "omni-moderation-2024-09-26",
    "text-moderation-latest",
]

# Source label recorded in the output; the spec copy is pinned to this commit
# (see shared/openai-openapi/SOURCE.md).
GENERATED_FROM = "openai-openapi f85dbe2 (shared/openai-openapi/openapi.yaml)"

# `created` for ids that carry no date: a fixed, arbitrary instant
# (2023-11-14T22:13:20Z) so the output is deterministic.
UNDATED_CREATED = 1700000000

# Model families that the real /v1/models lists as owned by "openai"; everything
# newer is "system" there.
OPENAI_OWNED = re.compile(
    r"^(gpt-3\.5-turbo.*|gpt-4|gpt-4-0314|gpt-4-0613|gpt-4-32k.*|"
    r"text-embedding-ada-002|text-moderation-.*)$"
)

DATE_FULL = re.compile(r"-(\d{4})-(\d{2})-(\d{2})(?:$|-)")
# Old four-digit snapshots such as gpt-4-0613 or gpt-4-0125-preview (MMDD).
DATE_MMDD = re.compile(r"-(\d{2})(\d{2})(?:$|-)")


class SpecError(Exception):
    pass


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def is_blank_or_comment(line):
    s = line.strip()
    return s == "" or s.startswith("#")


def unquote(s):
    s = s.strip()
    # Drop a trailing comment (only outside quotes, and YAML needs " #").
    if s and s[0] not in "\"'":
        s = re.split(r"\s+#", s, maxsplit=1)[0].strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        inner = s[1:-1]
        if s[0] == "'":
            return inner.replace("''", "'")
        return json.loads(s)  # double-quoted YAML scalars are JSON-compatible here
    return s


def find_block(lines, start, end, key, indent):
    """Return (first, stop) line range of the children of `key:` at `indent`.

    Searches lines[start:end] for a line `<indent spaces>key:` and returns the
    range of the lines nested under it (more indented), i.e. up to the next
    non-blank line indented `indent` or less.
    """
    prefix = " " * indent + key + ":"
    for i in range(start, end):
        line = lines[i]
        if line.startswith(prefix) and line[len(prefix):].strip() == "":
            j = i + 1
            while j < end:
                if not is_blank_or_comment(lines[j]) and indent_of(lines[j]) <= indent:
                    break
                j += 1
            return i + 1, j
    return None


def component_schemas_range(lines):
    comps = find_block(lines, 0, len(lines), "components", 0)
    if comps is None:
        raise SpecError("no top-level `components:` key")
    schemas = find_block(lines, comps[0], comps[1], "schemas", 2)
    if schemas is None:
        raise SpecError("no `components.schemas:` key")
    return schemas


def schema_block(lines, schemas_range, name):
    # Component schema names sit at indent 4 under `components: schemas:`.
    block = find_block(lines, schemas_range[0], schemas_range[1], name, 4)
    if block is None:
        raise SpecError(f"component schema {name!r} not found")
    return block


REF_RE = re.compile(r"""^\s*(?:-\s+)?\$ref:\s*["']?#/components/schemas/([^"'\s]+)["']?\s*$""")
ENUM_RE = re.compile(r"^(\s*)(?:-\s+)?enum:\s*(.*)$")


def collect(lines, schemas_range, name, seen=None):
    """Enum strings reachable from component schema `name`, following $ref."""
    if seen is None:
        seen = set()
    if name in seen:
        return []
    seen.add(name)
    first, stop = schema_block(lines, schemas_range, name)
    values = []
    i = first
    while i < stop:
        line = lines[i]
        m = REF_RE.match(line)
        if m:
            values.extend(collect(lines, schemas_range, m.group(1), seen))
            i += 1
            continue
        m = ENUM_RE.match(line)
        if not m:
            if "$ref" in line:
                raise SpecError(f"line {i + 1}: unrecognised $ref form: {line.strip()!r}")
            i += 1
            continue
        rest = m.group(2).strip()
        if rest.startswith("["):
            # Flow style: enum: [a, "b", c] (single line).
            if not rest.endswith("]"):
                raise SpecError(f"line {i + 1}: multi-line flow enum not supported")
            values.extend(unquote(v) for v in rest[1:-1].split(",") if v.strip())
            i += 1
            continue
        if rest:
            raise SpecError(f"line {i + 1}: unexpected enum form: {line.strip()!r}")
        # Block style: items are `- value` lines indented at least as far as
        # the `enum:` key (YAML allows the dash at the key's own indentation).
        key_indent = line.index("enum:")
        i += 1
        while i < stop:
            item = lines[i]
            if is_blank_or_comment(item):
                i += 1
                continue
            stripped = item.strip()
            if indent_of(item) < key_indent or not stripped.startswith("- "):
                break
            value = unquote(stripped[2:])
            if value.startswith(("{", "[")) or value.endswith(":"):
                raise SpecError(f"line {i + 1}: non-scalar enum item {stripped!r}")
            values.append(value)
            i += 1
    return values


def created_for(model_id):
    m = DATE_FULL.search(model_id)
    if m:
        y, mo, d = (int(x) for x in m.groups())
        return calendar.timegm((y, mo, d, 0, 0, 0))
    m = DATE_MMDD.search(model_id)
    if m:
        mo, d = int(m.group(1)), int(m.group(2))
        if 1 <= mo <= 12 and 1 <= d <= 31:
            # The MMDD snapshots ran from 2023-03 (gpt-4-0314) to 2024-01
            # (gpt-3.5-turbo-0125), so months before March are 2024.
            year = 2024 if mo < 3 else 2023
            return calendar.timegm((year, mo, d, 0, 0, 0))
    return UNDATED_CREATED


def owned_by(model_id):
    return "openai" if OPENAI_OWNED.match(model_id) else "system"


def build(spec_path):
    with open(spec_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    schemas_range = component_schemas_range(lines)
    ids = set()
    for root in ROOT_SCHEMAS:
        found = collect(lines, schemas_range, root)
        if not found:
            raise SpecError(f"no enum values found under {root!r}")
        ids.update(found)
    for v in ids:
        if not v or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", v):
            raise SpecError(f"implausible model id {v!r}")
    ids.update(EXTRA_MODELS)
    data = [
        {"id": i, "created": created_for(i), "owned_by": owned_by(i)}
        for i in sorted(ids)
    ]
    return {"generated_from": GENERATED_FROM, "data": data}


def render(doc):
    # One model per line keeps diffs readable.
    rows = ",\n".join("    " + json.dumps(m, ensure_ascii=False) for m in doc["data"])
    return (
        "{\n"
        f'  "generated_from": {json.dumps(doc["generated_from"])},\n'
        '  "data": [\n'
        f"{rows}\n"
        "  ]\n"
        "}\n"
    )


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default_spec = os.environ.get("TOLLGATE_OPENAPI_SPEC") or os.path.join(
        repo, "..", "shared", "openai-openapi", "openapi.yaml"
    )
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=default_spec)
    ap.add_argument("--out", default=os.path.join(repo, "crates", "simulator", "data", "models.json"))
    ap.add_argument("--check", action="store_true", help="fail if --out is stale")
    args = ap.parse_args()

    if not os.path.isfile(args.spec):
        sys.exit(f"gen-models: spec not found at {args.spec} (set --spec or TOLLGATE_OPENAPI_SPEC)")
    try:
        text = render(build(args.spec))
    except SpecError as e:
        sys.exit(f"gen-models: {args.spec}: {e}")

    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            sys.exit(f"gen-models: {args.out} is out of date; run scripts/gen-models.py")
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"gen-models: wrote {len(json.loads(text)['data'])} models to {args.out}")


if __name__ == "__main__":
    main()
