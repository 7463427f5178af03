"""Level switches over a ladder on a SmolLM2-shaped model: fused units, the budget held by the switch itself,
evo over ladder levels, and module-level documents within the schema's limits."""

import numpy as np
import pytest

from agentqat.arena.config import load_arena
from agentqat.generators.evopress import EvoGenerator
from agentqat.generators.switches import (
    best_uniform_level,
    ladder_switch,
    lateral_switch,
    layer_units,
    layout_at,
    module_units,
    snap_to_ladder,
)
from agentqat.levels import ladder_configs, level_name
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.layout import layout_bits, layout_of
from agentqat.strategy.resolve import module_role_name, resolve_strategy
from agentqat.strategy.space import SearchSpace


@pytest.fixture(scope="module")
def space(smollm2_shaped_facts):
    ladder = ladder_configs(load_arena("smollm2-3bit").levels.ladder, smollm2_shaped_facts)
    return SearchSpace(smollm2_shaped_facts, 3.3, ladder=ladder)


def test_units_fuse_qkv_and_gate_up(space):
    units = module_units(space.facts)
    assert len(units) == 4 * 30 and len(layer_units(space.facts)) == 30
    names = [[module_role_name(space.facts.linears[i]) for i in unit] for unit in units[:4]]
    assert names == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                     ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]  # fmt: skip


def test_switches_hold_the_budget_exactly_from_the_uniform_start(space):
    rng = np.random.default_rng(0)
    start = best_uniform_level(space)
    assert level_name(space.ladder[start]) == "gptq-w3-g64-asym"
    levels = [start] * len(space.facts.linears)
    bits = layout_bits(layout_at(levels, space), space.facts)
    moved = 0
    for step in range(300):
        units = layer_units(space.facts) if step % 4 == 0 else module_units(space.facts)
        switched = ladder_switch(levels, units, space, rng)
        if switched is None:  # a layer's step can outweigh any one other layer's (the ladder's steps differ)
            assert units is layer_units(space.facts)
            continue
        moved += 1
        assert sum(a != b for a, b in zip(switched, levels)) >= 2  # one unit up, another down
        assert layout_bits(layout_at(switched, space), space.facts) <= 3.3
        levels = switched
        for unit in module_units(space.facts):
            assert len({levels[i] for i in unit}) == 1
    assert moved >= 225 and layout_bits(layout_at(levels, space), space.facts) == pytest.approx(bits, abs=0.02)
    document = EvoGenerator(space)._ladder_offspring(
        {"name": "walk", **_document(levels, space)}, rng
    )  # a scattered allocation still compiles within 32 rules and resolves
    resolve_strategy(parse_strategy(document), space.facts)


def _document(levels, space):
    from agentqat.strategy.layout import document_of

    return document_of(layout_at(levels, space), space.facts, "walk")


def test_snap_puts_any_layout_on_the_ladder_within_budget(space):
    document = {"name": "off", "default": {"weight": {"bits": 3, "group_size": 32, "rounding": "rtn"}},
                "rules": [{"layers": "0-3", "modules": ["q_proj"], "weight": {"bits": 5}}]}  # fmt: skip
    levels = snap_to_ladder(layout_of(document, space.facts), space, np.random.default_rng(0))
    assert layout_bits(layout_at(levels, space), space.facts) <= 3.3
    assert all(len({levels[i] for i in unit}) == 1 for unit in module_units(space.facts))


def test_evo_on_a_ladder_proposes_ladder_allocations_of_its_best_survivor(space):
    from agentqat.generators.base import Evaluated

    uniform = _document([best_uniform_level(space)] * len(space.facts.linears), space)
    evo = EvoGenerator(space)
    proposals = evo.propose([Evaluated(uniform, -1.0, True, "ok", 0.7, 3.297)], 16, np.random.default_rng(1))
    assert len(proposals) == 16 and all("ladder switch" in document["notes"] for document in proposals)
    for document in proposals:
        layout = layout_of(document, space.facts)
        assert set(layout.configs) <= set(space.ladder)
        assert layout_bits(layout, space.facts) <= 3.3


def test_llm_edits_set_levels_on_fused_sets_and_stay_on_the_ladder(space, smollm2_shaped_facts):
    from agentqat.generators.llm.edits import EditDocument, EditError, apply_edits, edit_schema

    start = [best_uniform_level(space)] * len(space.facts.linears)
    parent = _document(start, space)
    edit = EditDocument.model_validate({"edits": [
        {"operator": "set_level", "layers": "0-2", "modules": "q_proj", "value": "gptq-w8-g0-asym"}]})
    child, repaired = apply_edits(parent, edit, space, np.random.default_rng(0))
    layout = layout_of(child, space.facts)
    assert repaired and set(layout.configs) <= set(space.ladder) and layout_bits(layout, space.facts) <= 3.3
    raised = {module_role_name(info) for info, config in zip(space.facts.linears, layout.configs)
              if level_name(config) == "gptq-w8-g0-asym"}  # fmt: skip
    assert raised == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    value = edit_schema(space)["$defs"]["Edit_set_level"]["properties"]["value"]
    assert value["enum"][0] == "gptq-w2-g64-asym" and len(value["enum"]) == 9
    no_ladder = SearchSpace(smollm2_shaped_facts, 3.3)
    assert "Edit_set_level" not in edit_schema(no_ladder)["$defs"]
    with pytest.raises(EditError, match="no level of the ladder"):
        apply_edits(parent, edit, no_ladder, np.random.default_rng(0))


def test_every_arm_proposes_ladder_allocations_on_a_ladder_arena(space):
    from agentqat.generators import make_generator
    from agentqat.generators.on_ladder import Mapped, on_ladder

    random = Mapped(make_generator("random", space), lambda document, rng: on_ladder(document, space, rng))
    proposals = random.propose([], 8, np.random.default_rng(3))
    assert random.name == "random" and len(proposals) == 8
    for document in proposals:
        layout = layout_of(document, space.facts)
        assert set(layout.configs) <= set(space.ladder) and layout_bits(layout, space.facts) <= 3.3
        assert all(len({layout.configs[i] for i in unit}) == 1 for unit in module_units(space.facts))
    already = _document([best_uniform_level(space)] * len(space.facts.linears), space)

    assert on_ladder(already, space, np.random.default_rng(0)) is already


@pytest.fixture(scope="module")
def tight_gguf_space(smollm2_shaped_facts):
    """The tight GPTQ GGUF arena's ladder at its 4.5-bit budget: GPTQ's and llama-quantize's IQ4_NL cost the same,
    and Q3_K costs what IQ4_NL does except on ffn_down (llama.cpp's Q4_0 fallback elsewhere)."""
    ladder = ladder_configs(load_arena("smollm2-gguf-gptq-tight").levels.ladder, smollm2_shaped_facts)
    return SearchSpace(smollm2_shaped_facts, 4.5, ladder=ladder)


def test_snap_keeps_a_unit_at_one_of_several_levels_of_equal_cost(tight_gguf_space):
    space = tight_gguf_space
    names = [level_name(level) for level in space.ladder]
    for name in ("gptq-w4-g32-asym-format-gguf_iq4_nl", "imatrix-w4-g32-asym-format-gguf_iq4_nl"):
        levels = [names.index(name)] * len(space.facts.linears)
        assert snap_to_ladder(layout_at(levels, space), space, np.random.default_rng(0)) == levels


def test_evo_moves_between_levels_of_equal_cost_at_a_budget_the_start_fills(tight_gguf_space):
    from agentqat.generators.base import Evaluated

    space = tight_gguf_space
    names = [level_name(level) for level in space.ladder]
    start = [names.index("imatrix-w4-g32-asym-format-gguf_iq4_nl")] * len(space.facts.linears)
    assert best_uniform_level(space) == start[0]
    proposals = EvoGenerator(space).propose(
        [Evaluated(_document(start, space), -1.0, True, "ok", 0.1, 4.5)], 16, np.random.default_rng(0)
    )
    assert len(proposals) == 16  # the start fills the budget: only lateral moves and rises paid by Q3_K's ffn_down
    used = set()
    for document in proposals:
        layout = layout_of(document, space.facts)
        assert set(layout.configs) <= set(space.ladder) and layout_bits(layout, space.facts) <= 4.5
        used |= {level_name(config) for config in layout.configs}
    assert {"gptq-w4-g32-asym-format-gguf_iq4_nl", "gptq-w5-g32-asym-format-gguf_q5_0",
            "imatrix-w3-g32-asym-format-gguf_q3_k"} <= used  # fmt: skip
    rng = np.random.default_rng(1)
    moved = lateral_switch(start, module_units(space.facts), space, rng)
    changed = [i for i, (a, b) in enumerate(zip(start, moved)) if a != b]
    assert len(changed) in (1, 2, 3) and {moved[i] for i in changed} <= {names.index("gptq-w4-g32-asym-format-gguf_iq4_nl"),
                                                                           names.index("imatrix-w3-g32-asym-format-gguf_q3_k")}  # fmt: skip
