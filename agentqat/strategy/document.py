"""The Strategy: a frozen, versioned JSON document that says how every linear module is quantized.

A strategy holds a complete `default` and ordered `rules`; a rule selects layers and modules and overrides
some fields for them, later rules winning. `schemas/strategy.schema.json` is generated from these classes
(`python -m agentqat.strategy.document > schemas/strategy.schema.json`) and a test keeps the two identical. Integers
and numbers are bounded by `enum`, which outlines-core and xgrammar both honour when constraining an LLM. The
weight formats and roundings are the method registry's (`agentqat.quant.registry`) and the outlier methods the
outlier registry's (`agentqat.quant.schemes`), read when a document is validated or the schema is built: a
registered method or policy is a value documents may name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError, field_validator
from pydantic_core import PydanticCustomError, core_schema

from agentqat.errors import UserError
from agentqat.quant import registry, schemes
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 256 * 1024
MAX_RULES = 32
MAX_DEPTH = 8  # arrays and objects in arrays and objects: a strategy nests 4 deep (rules, a rule, a gene, a list)
MAX_SHOWN = 60  # characters of a wrong value quoted in an error line
TOO_DEEP = f"arrays and objects nest deeper than {MAX_DEPTH} levels, where a strategy's nest at most 4; check the file"

Bits = Literal[2, 3, 4, 5, 6, 8, 16]
GroupSize = Literal[0, 16, 32, 64, 96, 128, 192, 256, 384, 576, 768, 1536]
ClipRatio = Literal[1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, "mse"]
OutlierFraction = Literal[0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]
OutlierThreshold = Literal[2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0]
SmoothAlpha = Literal[0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
# Spelt `(-N|)` instead of `(-N)?`: xgrammar 0.2.8 (vLLM's structured outputs) drops the {1,3} bound of a
# group followed by an optional one, and let "3128" through. Same language, and both decoders keep the bound.
LAYER_SPEC = r"^(all|[0-9]{1,3}(-[0-9]{1,3}|)(,[0-9]{1,3}(-[0-9]{1,3}|))*)$"
MODULE_PATTERN = r"^[A-Za-z0-9_.*?]{1,64}$"


@dataclass(frozen=True)
class OneOf:
    """A string field whose allowed values `names()` returns when a value is validated or the schema is built
    (an `enum`, like a Literal's, with pydantic's literal_error for anything else)."""

    names: Callable[[], tuple[str, ...]]

    def _validate(self, value: Any) -> str:
        allowed = self.names()
        if not isinstance(value, str) or value not in allowed:
            quoted = [repr(name) for name in allowed]
            expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        return {"enum": list(self.names()), "type": "string"}


WeightFormat = Annotated[str, OneOf(registry.formats)]
Rounding = Annotated[str, OneOf(registry.roundings)]
OutlierMethod = Annotated[str, OneOf(schemes.outlier_methods)]
ActivationFormat = Annotated[str, OneOf(schemes.activation_formats)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WeightGene(_Frozen):
    """How a module's weight is stored. In a rule every field is optional and overrides the default's."""

    bits: Bits | None = Field(None, description="2-8 bit codes; 16 leaves the weight unquantized")
    group_size: GroupSize | None = Field(None, description="weights per scale along the input; 0 = per output channel")
    symmetric: bool | None = None
    format: WeightFormat | None = None
    scale: Literal["fp16", "pow2"] | None = Field(None, description="pow2 scales turn dequantization into shifts")
    rounding: Rounding | None = None
    clip: ClipRatio | None = Field(None, description="share of each group's range kept, or an MSE search")


class ActivationGene(_Frozen):
    """Fake quantization of a module's input, optionally after SmoothQuant migration."""

    bits: Literal[4, 8, 16] | None = Field(None, description="16 keeps activations in the compute dtype")
    format: ActivationFormat | None = None
    granularity: Literal["per_token", "per_tensor"] | None = None
    smooth_alpha: SmoothAlpha | None = Field(None, description="SmoothQuant migration strength; absent = none")


class OutlierGene(_Frozen):
    """Weights kept in fp16 beside the quantized ones."""

    method: OutlierMethod | None = None
    fraction: OutlierFraction | None = Field(None, description="keep_fp16: share of entries kept")
    criterion: Literal["magnitude", "saliency"] | None = None
    threshold: OutlierThreshold | None = Field(None, description="llm_int8: activation magnitude of outlier columns")


class Genes(_Frozen):
    """The three gene groups a rule or the default can set."""

    weight: WeightGene = WeightGene()
    activation: ActivationGene = ActivationGene()
    outliers: OutlierGene = OutlierGene()


class Rule(Genes):
    """Overrides for the modules it selects: `layers` x `modules`."""

    layers: str = Field("all", pattern=LAYER_SPEC, description='"all", or indices and ranges: "0-3,7,20-29"')
    modules: tuple[str, ...] = Field(
        ("all",),
        min_length=1,
        max_length=8,
        description='roles (attn, mlp, all), names (q_proj, mlp.down_proj) or patterns (mlp.*)',
    )

    @field_validator("modules")
    @classmethod
    def _module_patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if not re.fullmatch(MODULE_PATTERN, pattern):
                raise ValueError(f"module pattern {pattern!r} may only hold letters, digits, _ . * ?")
        return patterns


class Arithmetic(_Frozen):
    """How the quantized model computes."""

    compute_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    shift_scales: bool = Field(False, description="force power-of-two scales everywhere (multiplies become shifts)")


BASE_DEFAULT = Genes(  # the quantizer configs' defaults, written once in agentqat.quant.base
    weight=WeightGene(**asdict(WeightQuant())),
    activation=ActivationGene(**asdict(ActivationQuant())),
    outliers=OutlierGene(**asdict(OutlierPolicy())),
)


class Strategy(_Frozen):
    """A quantization strategy: the individual of the tournament."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field("unnamed", max_length=80)
    notes: str = Field("", max_length=500)
    default: Genes = BASE_DEFAULT
    rules: tuple[Rule, ...] = Field((), max_length=MAX_RULES)
    arithmetic: Arithmetic = Arithmetic()


def strategy_json_schema() -> dict:
    """Returns the JSON Schema of a strategy document (what schemas/strategy.schema.json holds)."""
    schema = Strategy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://agentqat.dev/schemas/strategy-v{SCHEMA_VERSION}.json"
    return schema


def _json_path(location: tuple) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def _shown(value: object) -> str:
    """Returns `value`'s repr, cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _error_line(error: dict) -> str:
    path = _json_path(tuple(p for p in error["loc"] if not str(p).startswith("function-")))
    kind, got = error["type"], _shown(error.get("input"))
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling against schemas/strategy.schema.json"
    if kind == "literal_error" and path == "schema_version":
        return f"schema_version: {got} is not supported; this agentqat reads schema_version {SCHEMA_VERSION}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{path}: must be a JSON object (got {got})"
    if kind in ("tuple_type", "list_type"):
        return f"{path}: must be a JSON array (got {got})"
    if kind == "string_pattern_mismatch" and path.endswith(".layers"):
        return f'{path}: {got} is not a layer selection; write "all" or indices and ranges like "0-3,7"'
    return f"{path}: {error['msg']} (got {got})"


def _nesting(document: object) -> int:
    """Returns how deep arrays and objects nest in a parsed JSON document (0 for a scalar), counting no
    further than MAX_DEPTH + 1."""
    deepest, stack = 0, [(document, 1)]
    while stack and deepest <= MAX_DEPTH:
        node, level = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


class StrategyError(UserError):
    """A strategy document that cannot be used; `lines` holds one clear line per problem."""

    def __init__(self, source: str, lines: list[str]):
        self.lines = lines
        super().__init__(f"{source}: " + "; ".join(lines))


def parse_strategy(document: object, source: str = "strategy") -> Strategy:
    """Returns the Strategy a parsed JSON document describes, or raises StrategyError listing every problem."""
    if not isinstance(document, dict):
        raise StrategyError(source, [f"the document must be a JSON object, not {type(document).__name__}"])
    if _nesting(document) > MAX_DEPTH:
        raise StrategyError(source, [TOO_DEEP])
    try:
        # Strict JSON-mode validation: "yes" is not a boolean and 4.0 is not an integer bit width.
        return Strategy.model_validate_json(json.dumps(document), strict=True)
    except ValidationError as error:
        raise StrategyError(source, [_error_line(e) for e in error.errors()]) from None


def parse_strategy_text(text: str, source: str = "strategy") -> Strategy:
    """Returns the Strategy in a JSON string, or raises StrategyError with one line per problem."""
    if not text.strip():
        raise StrategyError(source, ["the document is empty; a strategy is a JSON object"])
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        hint = "the document ends early (truncated?)" if error.pos >= len(text.rstrip()) else error.msg
        raise StrategyError(source, [f"not valid JSON at line {error.lineno} column {error.colno}: {hint}"]) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise StrategyError(source, [TOO_DEEP]) from None
    return parse_strategy(document, source)


def load_strategy(path: str | Path) -> Strategy:
    """Returns the Strategy stored in the JSON file at `path`."""
    path = Path(path)
    if not path.is_file():
        raise StrategyError(str(path), ["no such file"])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise StrategyError(str(path), [f"the file is {size:,} bytes; strategies are at most {MAX_FILE_BYTES:,}"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StrategyError(str(path), ["the file is not UTF-8 text"]) from None
    return parse_strategy_text(text, str(path))


def strategy_id(document: object) -> str:
    """Returns a 12-hex-digit hash of what a strategy does (name and notes excluded), for de-duplication.

    Valid documents are hashed in canonical form (defaults filled in, keys sorted), so two spellings of the
    same strategy share an id; invalid ones are hashed as written.
    """
    try:
        canonical = parse_strategy(document).model_dump(mode="json", exclude={"name", "notes"})
    except StrategyError:
        canonical = document
    text = json.dumps(canonical, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dump_strategy(strategy: Strategy) -> str:
    """Returns the strategy as indented JSON without unset (null) override fields."""
    return strategy.model_dump_json(indent=2, exclude_none=True)


if __name__ == "__main__":
    print(json.dumps(strategy_json_schema(), indent=2))
