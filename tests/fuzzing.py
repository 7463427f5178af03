"""Hypothesis strategies for the fuzz tests (tests/test_fuzz*.py): JSON trees, strategy-shaped and edit-shaped
documents with wrong types and values mixed in, deep nesting; and the settings every fuzz test runs under
(derandomized, so a run is reproducible, and sized for 2 cores)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True, database=None, deadline=None, max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
trees = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=16
)


def valid_or_wrong(*valid: object) -> st.SearchStrategy:
    """Returns values that are mostly one of `valid`, else any JSON value."""
    return st.sampled_from(valid) | st.sampled_from(valid) | trees


weight = st.fixed_dictionaries({}, optional={
    "bits": valid_or_wrong(2, 3, 4, 8, 16, 4.0, 7), "group_size": valid_or_wrong(0, 32, 64, 128, 576, -1),
    "symmetric": valid_or_wrong(True, False, "yes"), "format": valid_or_wrong("int", "nf4", "fp4", "fp8_e4m3", "llm_int8"),
    "scale": valid_or_wrong("fp16", "pow2"), "rounding": valid_or_wrong("rtn", "gptq", "awq", "hqq"),
    "clip": valid_or_wrong(1.0, 0.9, "mse", 1.5),
})  # fmt: skip
activation = st.fixed_dictionaries({}, optional={
    "bits": valid_or_wrong(4, 8, 16), "format": valid_or_wrong("int", "fp8_e4m3"),
    "granularity": valid_or_wrong("per_token", "per_tensor"), "smooth_alpha": valid_or_wrong(0.5, 0.8, None),
})  # fmt: skip
outliers = st.fixed_dictionaries({}, optional={
    "method": valid_or_wrong("none", "keep_fp16", "llm_int8"), "fraction": valid_or_wrong(0.0, 0.01, 0.5),
    "criterion": valid_or_wrong("magnitude", "saliency"), "threshold": valid_or_wrong(6.0, 20.0),
})  # fmt: skip
layer_specs = valid_or_wrong("all", "0", "1", "0-1", "1-0", "0,1", "0-999", "999", "", "all,1") | st.from_regex(r"[0-9,\-]{1,12}", fullmatch=True)
module_lists = valid_or_wrong(["all"], ["attn"], ["mlp"], ["mlp.*"], ["q_proj", "mlp.down_proj"], ["nothing"], [], ["*"])
genes = {"weight": weight | trees, "activation": activation | trees, "outliers": outliers | trees}
rules = st.fixed_dictionaries({}, optional={**genes, "layers": layer_specs, "modules": module_lists})
strategy_documents = st.fixed_dictionaries({}, optional={
    "schema_version": valid_or_wrong(1, 2), "name": valid_or_wrong("s", "x" * 100), "notes": st.text(max_size=20),
    "default": st.fixed_dictionaries({}, optional=genes) | trees, "rules": st.lists(rules, max_size=4) | trees,
    "arithmetic": st.fixed_dictionaries({}, optional={"compute_dtype": valid_or_wrong("fp32", "bf16", "fp16"),
                                                      "shift_scales": valid_or_wrong(True, False)}),
})  # fmt: skip
edit_documents = st.fixed_dictionaries({"edits": st.lists(st.fixed_dictionaries({
    "operator": valid_or_wrong("set_bits", "bit_shift", "set_format", "set_group_size", "set_rounding", "set_scale",
                               "set_symmetric", "set_outliers"),
    "layers": layer_specs, "modules": valid_or_wrong("all", "attn", "mlp", "q_proj", "mlp.*"),
    "value": valid_or_wrong(-1, 1, 2, 3, 4, 8, 16, 32, 64, True, "int", "nf4", "gptq", "pow2", "keep_fp16"),
}), max_size=4)})  # fmt: skip
recombinations = st.fixed_dictionaries({
    "crossover": valid_or_wrong("layerwise", "blockwise", "spans"),
    "spans": st.lists(st.fixed_dictionaries({"layers": layer_specs, "parent": valid_or_wrong("A", "B", "C")}), max_size=5),
})  # fmt: skip


def nested(depth: int, opener: str) -> str:
    """Returns JSON text that opens `depth` arrays or objects and closes none (cut) or all."""
    return opener * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth


deep_texts = st.builds(nested, st.integers(1, 300_000), st.sampled_from(["[", "{"]))
json_texts = st.builds(json.dumps, trees | strategy_documents) | st.text(max_size=200) | deep_texts
