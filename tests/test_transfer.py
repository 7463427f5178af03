"""agentqat transfer: a strategy carried to a model of another depth and shape by relative layer depth."""

import json

import pytest

from agentqat.cli import main
from agentqat.models import load_facts
from agentqat.strategy.document import StrategyError, parse_strategy
from agentqat.strategy.resolve import module_role_name, resolve_strategy
from agentqat.strategy.transfer import source_layer, transfer

STRATEGY = {
    "schema_version": 1,
    "name": "layered",
    "default": {"weight": {"bits": 4, "group_size": 64, "rounding": "rtn"}},
    "rules": [
        {"layers": "0", "modules": ["attn"], "weight": {"bits": 3, "group_size": 32}},
        {"layers": "3", "modules": ["mlp"], "weight": {"bits": 8, "group_size": 0}},
    ],
}


@pytest.mark.parametrize(
    "target_layers, source_layers, expected",
    [(2, 4, [1, 3]), (4, 4, [0, 1, 2, 3]), (18, 30, [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19, 20, 22, 24, 25, 27, 29]), (4, 2, [0, 0, 1, 1])],
)
def test_each_target_layer_takes_the_source_layer_at_its_depth(target_layers, source_layers, expected):
    assert [source_layer(t, target_layers, source_layers) for t in range(target_layers)] == expected


def test_a_layered_strategy_moves_to_a_shallower_wider_model(make_tiny_llama):
    source = load_facts(str(make_tiny_llama(num_layers=4)))
    target = load_facts(str(make_tiny_llama(num_layers=2, hidden=96)))  # group 64 does not divide 96
    with pytest.raises(StrategyError, match="layer 3 does not exist"):
        resolve_strategy(parse_strategy(STRATEGY), target)  # as it is, it does not apply
    moved = transfer(STRATEGY, source, target)
    resolved = resolve_strategy(parse_strategy(moved.document), target)  # valid on the target
    for info in target.linears:
        config = resolved.modules[info.name]
        if info.layer == 1 and module_role_name(info).startswith("mlp."):
            assert config.weight.bits == 8  # source layer 3's MLP rule
        else:
            assert config.weight.bits == 4  # target layer 0 is source layer 1: the default
        assert config.weight.group_size == 0 or info.in_features % config.weight.group_size == 0
    assert moved.repaired > 0  # the 96-wide inputs could not keep group 64
    assert moved.missing_roles == ()
    assert 4 < moved.source_bits < 8 and 4 < moved.target_bits < 8


def test_the_command_writes_a_strategy_quantize_reads(make_tiny_llama, tmp_path, capsys):
    source, target = make_tiny_llama(num_layers=4), make_tiny_llama(num_layers=2, hidden=96)
    strategy = tmp_path / "layered.json"
    strategy.write_text(json.dumps(STRATEGY))
    out = tmp_path / "moved.json"
    assert main(["transfer", str(strategy), "--from", str(source), "--to", str(target), "--out", str(out)]) == 0
    assert "module(s) repaired" in capsys.readouterr().out
    assert main(["validate", str(out), "--model", str(target)]) == 0
    assert out.stat().st_mode & 0o777 == 0o644  # a file for people: readable by all, not mkstemp's private 0600
    # a strategy that is not valid on the model it claims to come from is one clear error
    assert main(["transfer", str(strategy), "--from", str(target), "--to", str(source), "--out", str(tmp_path / "x.json")]) == 2
    assert "layer 3 does not exist" in capsys.readouterr().err
