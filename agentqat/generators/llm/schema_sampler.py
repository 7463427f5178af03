"""Random instances of a JSON schema, drawn with a seeded numpy Generator: the documents the `llm-random-edits`
control decodes instead of an LLM, and the examples the prompts show.

The subset of JSON Schema that the LLM generator's request schemas use (`edits.propose_schema`, `edit_schema`,
`recombine_schema`), drawn as:

    $ref            a local reference ("#/$defs/Name"), followed
    const, enum     uniform among the listed values
    oneOf, anyOf    uniform among the arms (each arm then drawn); a list of types: uniform among them
    object          every required property; each optional one with P `p_optional` (in schema order)
    array           length uniform in [minItems, maxItems] (maxItems absent: minItems + MAX_ITEMS_UNBOUNDED)
    string          a `pattern` drawn by `sample_pattern`; else MAX_STRING lowercase letters at most
    integer, number uniform in [minimum, maximum] (each side, if absent, UNBOUNDED_SPAN from the other or 0)
    boolean, null   uniform; None

Nothing else is understood: a schema that uses another keyword which constrains values (`uniqueItems`,
`multipleOf`, `not`, `if`, ...) raises ValueError naming it, so that a sample never silently breaks its schema.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

P_OPTIONAL = 0.5
MAX_ITEMS_UNBOUNDED = 3
MAX_STRING = 8
MAX_REPEAT_UNBOUNDED = 3  # `*` and `+` repeat at most this often beyond their minimum
UNBOUNDED_SPAN = 100
KNOWN = {"title", "description", "default", "discriminator", "$schema", "$id", "$defs", "examples", "properties",
           "required", "additionalProperties", "items", "minItems", "maxItems", "pattern", "minimum", "maximum",
           "type", "enum", "const", "oneOf", "anyOf", "$ref"}  # fmt: skip

_parser = re._parser  # type: ignore[attr-defined]  # the standard library's regex parser (sre_parse)
_constants = re._constants  # type: ignore[attr-defined]


def sample_instance(schema: dict, rng: np.random.Generator, p_optional: float = P_OPTIONAL) -> Any:
    """Returns a random instance of `schema` (see the module docstring); raises ValueError on an unknown keyword."""
    return _Sampler(schema, rng, p_optional).draw(schema)


class _Sampler:
    def __init__(self, root: dict, rng: np.random.Generator, p_optional: float):
        self.root, self.rng, self.p_optional = root, rng, p_optional

    def _pick(self, values: list) -> Any:
        return values[int(self.rng.integers(len(values)))]

    def draw(self, node: dict) -> Any:
        unknown = set(node) - KNOWN
        if unknown:
            raise ValueError(f"the schema sampler does not understand {sorted(unknown)}")
        if "$ref" in node:
            return self.draw(self._resolve(node["$ref"]))
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return self._pick(list(node["enum"]))
        if "oneOf" in node or "anyOf" in node:
            return self.draw(self._pick(node.get("oneOf") or node["anyOf"]))
        kind = node.get("type")
        if isinstance(kind, list):
            kind = self._pick(kind)
        if kind is None:
            raise ValueError(f"the schema sampler needs a type, an enum, a const or a reference: {node}")
        return getattr(self, f"_{kind}")(node)

    def _resolve(self, reference: str) -> dict:
        if not reference.startswith("#/"):
            raise ValueError(f"the schema sampler follows local references only, not {reference!r}")
        node: Any = self.root
        for part in reference[2:].split("/"):
            node = node[part]
        return node

    def _object(self, node: dict) -> dict:
        required = set(node.get("required", ()))
        return {
            key: self.draw(child)
            for key, child in node.get("properties", {}).items()
            if key in required or self.rng.random() < self.p_optional
        }

    def _array(self, node: dict) -> list:
        low = node.get("minItems", 0)
        high = node.get("maxItems", low + MAX_ITEMS_UNBOUNDED)
        return [self.draw(node.get("items", {"type": "null"})) for _ in range(int(self.rng.integers(low, high + 1)))]

    def _bounds(self, node: dict) -> tuple[float, float]:
        low, high = node.get("minimum"), node.get("maximum")
        low = low if low is not None else (high - UNBOUNDED_SPAN if high is not None else 0)
        return low, high if high is not None else low + UNBOUNDED_SPAN

    def _integer(self, node: dict) -> int:
        low, high = self._bounds(node)
        return int(self.rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1))

    def _number(self, node: dict) -> float:
        low, high = self._bounds(node)
        return float(self.rng.uniform(low, high))

    def _boolean(self, node: dict) -> bool:
        return bool(self.rng.integers(2))

    def _null(self, node: dict) -> None:
        return None

    def _string(self, node: dict) -> str:
        if "pattern" in node:
            return sample_pattern(node["pattern"], self.rng)
        letters = "abcdefghijklmnopqrstuvwxyz"
        return "".join(self._pick(list(letters)) for _ in range(int(self.rng.integers(1, MAX_STRING + 1))))


def sample_pattern(pattern: str, rng: np.random.Generator) -> str:
    """Returns a random string that the regular expression `pattern` matches in full: branches uniform, each
    repeat count uniform within its bounds (unbounded ones within MAX_REPEAT_UNBOUNDED more), characters uniform
    within their class. Anchors are dropped; raises ValueError on what it cannot draw (look-arounds, back-refs)."""
    return "".join(_draw_pattern(_parser.parse(pattern), rng))


def _class_characters(items: list) -> list[str]:
    """Returns the characters an IN (character class) node admits, among printable ASCII."""
    if items and items[0][0] is _constants.NEGATE:
        inside = set(_class_characters(items[1:]))
        return [chr(c) for c in range(32, 127) if chr(c) not in inside]
    characters: list[str] = []
    for op, value in items:
        if op is _constants.LITERAL:
            characters.append(chr(value))
        elif op is _constants.RANGE:
            characters.extend(chr(c) for c in range(value[0], value[1] + 1))
        elif op is _constants.CATEGORY and value is _constants.CATEGORY_DIGIT:
            characters.extend("0123456789")
        else:
            raise ValueError(f"the pattern sampler cannot draw the class item {op} {value}")
    return characters


def _draw_pattern(nodes, rng: np.random.Generator) -> list[str]:
    out: list[str] = []
    for op, value in nodes:
        if op is _constants.LITERAL:
            out.append(chr(value))
        elif op is _constants.AT:
            continue  # ^ and $: the drawn string is the whole match
        elif op is _constants.ANY:
            out.append(chr(int(rng.integers(32, 127))))
        elif op is _constants.NOT_LITERAL:
            characters = [chr(c) for c in range(32, 127) if c != value]
            out.append(characters[int(rng.integers(len(characters)))])
        elif op is _constants.IN:
            characters = _class_characters(value)
            out.append(characters[int(rng.integers(len(characters)))])
        elif op is _constants.SUBPATTERN:
            out.extend(_draw_pattern(value[-1], rng))
        elif op is _constants.BRANCH:
            branches = value[1]
            out.extend(_draw_pattern(branches[int(rng.integers(len(branches)))], rng))
        elif op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT):
            low, high, body = value
            high = low + MAX_REPEAT_UNBOUNDED if high is _constants.MAXREPEAT else high
            for _ in range(int(rng.integers(low, high + 1))):
                out.extend(_draw_pattern(body, rng))
        else:
            raise ValueError(f"the pattern sampler cannot draw {op}")
    return out
