"""The level database on a tiny real Llama: the ladder checked by the registry, builds that resume after a kill,
DB-backed matches that give exactly the numbers of quantizing on the fly, packed levels that read back bit for bit,
and float32 files of format 1 still read."""

import pytest

from agentqat.arena.config import Arena, Levels, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.errors import UserError
from agentqat.levels import build_database, ladder_configs, level_name
from agentqat.levels.database import level_file, missing_levels
from agentqat.strategy.document import WeightGene

LADDER = (
    WeightGene(bits=2, group_size=32, rounding="gptq"),
    WeightGene(bits=3, group_size=32, rounding="gptq"),
    WeightGene(bits=4, group_size=32, rounding="gptq"),
    WeightGene(bits=8, group_size=0, rounding="rtn"),
)


def tiny_arena(model_dir, corpus, ladder=LADDER):
    return Arena(
        name="tiny-levels", model=str(model_dir), corpus=str(corpus), window_tokens=64, calibration_windows=4,
        bits_budget=3.5, stages=(Stage(name="screen", windows=2),),
        levels=Levels(ladder=ladder) if ladder else None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def benches(sensitive_llama_dir, small_corpus_file):
    with_levels = Workbench(tiny_arena(sensitive_llama_dir, small_corpus_file))
    with_levels.prepare(0)
    return with_levels, Workbench(tiny_arena(sensitive_llama_dir, small_corpus_file, ladder=None))


def test_ladder_is_checked_and_ordered_by_cost(benches):
    facts = benches[0].loaded.facts
    names = [level_name(c) for c in ladder_configs(LADDER[::-1], facts)]
    assert names == ["gptq-w2-g32-asym", "gptq-w3-g32-asym", "gptq-w4-g32-asym", "rtn-w8-g0-asym"]
    with pytest.raises(UserError, match=r"levels.ladder\[1\].*group_size 576"):
        ladder_configs((LADDER[0], WeightGene(bits=3, group_size=576)), facts)


def test_database_backed_match_equals_quantizing_on_the_fly(benches):
    database, plain = benches
    document = {
        "name": "mixed", "default": {"weight": {"bits": 3, "group_size": 32, "rounding": "gptq"}},
        "rules": [{"layers": "0", "modules": ["mlp"], "weight": {"bits": 2}},
                  {"layers": "1", "modules": ["attn"], "weight": {"bits": 8, "group_size": 0, "rounding": "rtn"}}],
    }  # fmt: skip
    levels = database.levels()
    name = next(iter(database.loaded.facts.linears)).name
    assert levels.weight(name, levels.levels[0], "another calibration") is None
    results = [bench.play(MatchRequest(document, "screen", 0)) for bench in (database, plain)]
    assert all(result.outcome == "ok" for result in results), results
    assert results[0].quality.window_kl == results[1].quality.window_kl
    assert results[0].quality.window_nll == results[1].quality.window_nll
    assert results[0].cost.bits_per_weight == results[1].cost.bits_per_weight


class _Killed(Exception):
    pass


class _KillAfter:
    """A reporter that raises (as a kill would stop the build) after `steps` steps."""

    def __init__(self, steps):
        self.steps = steps

    def phase_started(self, name, total=None, detail=""):
        self.name = name

    def phase_advanced(self, steps=1):
        self.steps -= steps
        if self.steps < 0:
            raise _Killed

    def phase_finished(self, name, seconds):
        pass


def test_a_killed_build_keeps_finished_levels_and_resumes(benches, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    bench = benches[0]
    levels = ladder_configs(LADDER, bench.loaded.facts)
    calibration = bench.calibration(4)
    modules = len(bench.loaded.facts.linears)
    with pytest.raises(_Killed):
        build_database(bench.loaded.model, "tiny", calibration, levels, _KillAfter(modules + 3))
    directory = tmp_path / "levels" / f"tiny-{calibration.key}"
    assert missing_levels(directory, levels) == list(levels[1:])
    reporter = _KillAfter(10**6)
    build_database(bench.loaded.model, "tiny", calibration, levels, reporter)
    assert 10**6 - reporter.steps == modules * (len(levels) - 1)
    assert missing_levels(directory, levels) == []
    assert sorted(p.name for p in directory.glob("*.safetensors")) == sorted(level_file(c) for c in levels)


def test_levels_build_refuses_an_arena_without_a_ladder(capsys):
    from agentqat.cli import main

    assert main(["levels", "build", "--arena", "smollm2-default"]) == 2
    assert "declares no level ladder" in capsys.readouterr().err


# One level per integer-grid rounding with every packed variant (pow2 scales as exponents, symmetric grids with no
# zeros, hqq's float zeros, AWQ's divisor, per-channel groups, 3/5/6-bit codes split in fields), and levels of
# formats with no packed form yet, stored float32.
PACKED_LADDER = (
    WeightGene(bits=3, group_size=32, rounding="gptq"),
    WeightGene(bits=5, group_size=32, rounding="awq", symmetric=True, scale="pow2"),
    WeightGene(bits=6, group_size=0, rounding="hqq"),
    WeightGene(bits=2, group_size=32, rounding="hqq", clip="mse"),
    WeightGene(bits=4, group_size=0, rounding="rtn", symmetric=True, clip=0.9),
)
FLOAT32_LADDER = (WeightGene(bits=8, group_size=0, format="fp8_e4m3"), WeightGene(bits=4, group_size=32, format="gguf_q4_0"))


def test_packed_levels_read_bit_for_bit_what_quantizing_computes(benches, tmp_path, monkeypatch):
    import torch

    from agentqat.levels.database import FLOAT32_BYTES, LevelDatabase, module_bytes, packs
    from agentqat.models import quantizable_linears
    from agentqat.strategy.apply import quantize_module

    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    bench = benches[0]
    packed, float32 = (ladder_configs(ladder, bench.loaded.facts) for ladder in (PACKED_LADDER, FLOAT32_LADDER))
    calibration = bench.calibration(4)
    directory = build_database(bench.loaded.model, "tiny", calibration, packed + float32)
    database = LevelDatabase(directory, packed + float32, calibration.key)
    linears = quantizable_linears(bench.loaded.model)
    weights = sum(info.in_features * info.out_features for info in bench.loaded.facts.linears)
    for config in packed + float32:
        assert packs(config) == (config in packed)
        assert database.packed_modules(config) == (len(linears) if config in packed else 0), level_name(config)
        for name, linear in linears.items():
            stored = database.weight(name, config, calibration.key)
            made = quantize_module(linear, config, calibration.stats[name], torch.float32).weight
            assert stored.dtype == torch.float32 and stored.shape == made.shape
            assert torch.equal(stored.view(torch.int32), made.view(torch.int32)), (level_name(config), name)
        data = sum(module_bytes(config, info) for info in bench.loaded.facts.linears)
        size = database.path(config).stat().st_size
        if config in packed:  # the packed data as the storage rule counts it (AWQ's divisor and the header aside)
            assert size < FLOAT32_BYTES * weights / 4  # 2 to 6 bits a weight against 32
            assert data < size < data + 400 * len(linears) + 4 * sum(info.in_features for info in bench.loaded.facts.linears)
        else:
            assert data == FLOAT32_BYTES * weights < size


def test_format_1_float32_levels_are_still_read_and_not_rebuilt(benches, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from agentqat.levels.database import LevelDatabase, stored_level
    from agentqat.models import quantizable_linears
    from agentqat.strategy.apply import quantize_module

    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path))
    bench = benches[0]
    old, new = ladder_configs(LADDER[:2], bench.loaded.facts)
    calibration = bench.calibration(4)
    directory = tmp_path / "levels" / f"tiny-{calibration.key}"
    directory.mkdir(parents=True)
    linears = quantizable_linears(bench.loaded.model)
    # A level as format 1 wrote it: every module's float32 weight under its name, the file named by format 1.
    weights = {name: quantize_module(linear, old, calibration.stats[name], torch.float32).weight.contiguous()
               for name, linear in linears.items()}  # fmt: skip
    save_file(weights, str(directory / level_file(old, 1)), metadata={"level": "{}"})
    reporter = _KillAfter(10**6)
    build_database(bench.loaded.model, "tiny", calibration, (old, new), reporter)
    assert 10**6 - reporter.steps == len(linears)  # only the level with no file was built
    assert stored_level(directory, old) == directory / level_file(old, 1)
    assert stored_level(directory, new) == directory / level_file(new)
    database = LevelDatabase(directory, (old, new), calibration.key)
    assert database.packed_modules(old) == 0 and database.packed_modules(new) == len(linears)
    for name in linears:
        assert torch.equal(database.weight(name, old, calibration.key), weights[name])


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_pack_at_their_width_and_unpack(bits):
    import torch

    from agentqat.levels.packing import pack_codes, packed_size, unpack_codes

    generator = torch.Generator().manual_seed(bits)
    for count in (1, 7, 8, 9, 1000):
        codes = torch.randint(0, 2**bits, (count,), dtype=torch.uint8, generator=generator)
        packed = pack_codes(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, bits) <= count * bits // 8 + 3
        assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_integer_grid_weights_hold_no_negative_zero():
    import torch

    from agentqat.quant import WeightQuant, quantize_weight

    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    quantized = quantize_weight(weight, WeightQuant(bits=3, group_size=32, symmetric=True))
    assert bool((quantized == 0).any()) and not bool(torch.signbit(quantized[quantized == 0]).any())
