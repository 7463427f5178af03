"""The sensitivity map (agentqat sensitivity) on a 4-layer tiny Llama with weights N(0, 0.25^2), and the evolve
manifest's switch that hands it to generators."""

from __future__ import annotations

import json

import pytest
import torch

from agentqat.arena.config import load_arena
from agentqat.cli import main
from agentqat.errors import UserError
from agentqat.models import load_model
from agentqat.study.fisher import gradient_measures
from agentqat.study.sensitivity_map import Measures, cached_map, prior_values, rank_correlations, shared_map


@pytest.fixture(scope="module")
def arena_file(make_tiny_llama, small_corpus_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "tiny-sensitivity.toml"
    path.write_text(
        f'name = "tiny-sensitivity"\nmodel = "{make_tiny_llama(num_layers=4, weight_std=0.25)}"\ncorpus = "{small_corpus_file}"\n'
        'window_tokens = 64\ncalibration_windows = 4\nbits_budget = 3.5\ncollapse_ratio = 1000.0\n[[stages]]\nname = "screen"\nwindows = 2\n'
    )
    return path


def test_fisher_and_gradient_norms_leave_the_model_as_it_was(make_tiny_llama):
    loaded = load_model(str(make_tiny_llama(weight_std=0.25)))
    windows = torch.randint(0, 500, (3, 32), generator=torch.Generator().manual_seed(0))
    flags = [p.requires_grad for p in loaded.model.parameters()]
    measures = gradient_measures(loaded.model, windows)
    assert len(measures.fisher) == 14 and all(value > 0 for value in measures.fisher.values())
    assert all(value > 0 for value in measures.gradient_norm.values())
    assert [p.requires_grad for p in loaded.model.parameters()] == flags and all(p.grad is None for p in loaded.model.parameters())


def test_rank_correlations_are_spearmans():
    layers = {i: Measures(float(i), float(3 - i), {2: float(i * i), 8: 1.0}) for i in range(4)}
    correlations = rank_correlations(layers, (2, 8))
    assert correlations["fisher~gradient_norm"] == pytest.approx(-1.0)
    assert correlations["fisher~kl@2"] == pytest.approx(1.0) and correlations["fisher~kl@8"] is None


def test_the_command_measures_prints_caches_and_plots_the_map(arena_file, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    args = ["sensitivity", "--arena", str(arena_file), "--bits", "2,8", "--fisher-windows", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rank correlations over layers" in printed and "fisher vs kl@2" in printed and "measured in" in printed
    [stored] = (tmp_path / "sensitivity-map").glob("*.json")
    assert stored.with_suffix(".png").stat().st_size > 1000
    data = json.loads(stored.read_text())
    assert data["matches"] == 2 * (4 + 7)  # each of 4 layers and 7 roles at 2 widths
    layers = {int(layer): measures for layer, measures in data["layers"].items()}
    assert all(m["kl"]["2"] > m["kl"]["8"] >= 0 and m["fisher"] > 0 for m in layers.values())
    assert set(data["roles"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert main(args) == 0 and "read from the cache" in capsys.readouterr().out


def test_an_evolve_run_records_the_switch_and_its_generator_gets_the_map(arena_file, monkeypatch, tmp_path):
    from agentqat.rundir.manifest import read_manifest, write_manifest
    from agentqat.session import evolve_manifest

    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    arena = load_arena(str(arena_file))
    with pytest.raises(UserError, match="no sensitivity map yet"):
        evolve_manifest(arena, sensitivity="map", generator="random", population=2)
    assert evolve_manifest(arena, generator="random", population=2).sensitivity == "probes"
    measured, _ = shared_map(arena, fisher_windows=1)
    manifest = evolve_manifest(arena, sensitivity="map", generator="random", population=2)
    (tmp_path / "run").mkdir()
    write_manifest(tmp_path / "run", manifest)
    assert read_manifest(tmp_path / "run").sensitivity == "map"
    assert cached_map(arena).layers == measured.layers
    assert prior_values(measured, arena.bits_budget) == measured.layer_kl(3)  # the widest width within 3.5 bits
