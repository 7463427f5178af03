"""`agentqat plan` on configs only (no weights, no download): Llama-3.2-1B, Llama-3-8B and Qwen2.5-7B written as
transformers config dicts into directories holding only a config.json. Parameter counts, memory and sizes that
scale as the shapes say, times from known rates, the fit against a GPU's memory, and bad input as one line."""

import json

import pytest

from agentqat.arena.config import load_arena
from agentqat.cli import main
from agentqat.errors import UserError
from agentqat.plan import Device, Rates, load_rates, load_shape, make_plan, parse_device, parse_memory, render_plan
from agentqat.plan.memory import HESSIAN_COLLECT_BYTES, reference_windows
from agentqat.plan.shape import hessian_entries, hessian_widths

CONFIGS = {
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
PARAMETERS = {"llama-3.2-1b": 1.24e9, "llama-3-8b": 8.03e9, "qwen2.5-7b": 7.62e9}
# Round numbers, so that expected times are exact products.
RATES = Rates(
    source="test rates", threads=1, forward_s_per_token_param=1e-11, calibration_s_per_token_param=2e-11,
    rtn_s_per_weight=1e-9, gptq_s_per_column=1e-4, gptq_s_per_weight=0.0, gptq_s_per_weight_column=1e-10,
    level_write_s_per_byte=1e-9, level_read_s_per_byte=1e-9,
)  # fmt: skip
GIB = 2**30


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    """Returns name -> a directory holding only that model's config.json."""
    dirs = {}
    for name, config in CONFIGS.items():
        directory = tmp_path_factory.mktemp(name)
        (directory / "config.json").write_text(json.dumps(config))
        dirs[name] = directory
    return dirs


@pytest.fixture(scope="module")
def shapes(config_dirs):
    return {name: load_shape(str(directory)) for name, directory in config_dirs.items()}


def test_parameter_counts_from_config_only(shapes):
    for name, shape in shapes.items():
        assert shape.facts.num_parameters == pytest.approx(PARAMETERS[name], rel=0.005), name
    assert shapes["llama-3-8b"].facts.num_parameters == 8_030_261_248
    assert len(shapes["llama-3-8b"].facts.linears) == 32 * 7
    assert shapes["llama-3.2-1b"].tied_embeddings and not shapes["llama-3-8b"].tied_embeddings


def test_hessians_are_shared_by_modules_reading_one_input(shapes):
    facts = shapes["llama-3-8b"].facts
    assert sorted(hessian_widths(facts, 0)) == [4096, 4096, 4096, 14336]  # q/k/v, o, gate/up, down
    assert hessian_entries(facts) == 32 * (3 * 4096**2 + 14336**2)


def plan_of(shape, arena="smollm2-default", device="cpu", gpu_memory=None, rates=RATES, matches=100, workers=1):
    return make_plan(shape, load_arena(arena), parse_device(device), rates, matches, workers, gpu_memory)


def terms(memory):
    return {term.name: term.bytes for term in memory.terms}


def test_memory_scales_with_the_shapes(shapes):
    arena = load_arena("smollm2-default")
    for name, shape in shapes.items():
        facts = shape.facts
        cpu, cuda = terms(plan_of(shape).memory), terms(plan_of(shape, device="cuda").memory)
        assert cpu["weights"] == 4 * facts.num_parameters and cuda["weights"] == 2 * facts.num_parameters
        assert cpu["calibration Hessians"] == HESSIAN_COLLECT_BYTES * hessian_entries(facts)
        positions = reference_windows(arena) * (arena.window_tokens - 1)
        assert cpu["base references"] == positions * (2 * facts.vocab_size + 12)
        assert cpu["log-probabilities"] == 3 * 4 * arena.window_tokens * facts.vocab_size * 4
        assert "level database read" not in cpu  # the default arena has no ladder
    small, large = (plan_of(shapes[name]) for name in ("llama-3.2-1b", "llama-3-8b"))
    assert large.memory.total > 4 * small.memory.total
    assert large.sequential.total < large.memory.total / 5  # one layer at a time


def test_level_database_sizes_scale_with_the_linear_weights(shapes):
    # The 8B's hidden sizes are multiples of 64 and 32, as the low-bit ladder's g192 is not: a ladder of its own.
    for name in ("llama-3.2-1b", "llama-3-8b", "qwen2.5-7b"):
        shape = shapes[name]
        database = plan_of(shape).database
        assert not database.declared and len(database.levels) == 1
        level = database.levels[0]
        assert level.float32_bytes == 4 * shape.linear_weights
        # W4 g64 asymmetric, as the database packs it: 4 code bits, a 16-bit scale and a 4-bit zero per 64 weights
        assert level.packed and level.bytes == pytest.approx(shape.linear_weights * (4 + 20 / 64) / 8, rel=1e-6)
        assert database.calibration_bytes == 4 * hessian_entries(shape.facts)
    assert shapes["llama-3-8b"].linear_weights * 4 / 2**30 == pytest.approx(26.0, abs=0.05)  # 26 GiB a float32 level


def test_a_ladder_arena_sizes_every_level(shapes, tmp_path):
    arena = tmp_path / "ladder.toml"
    arena.write_text(
        'name = "ladder"\nwindow_tokens = 256\n[[stages]]\nname = "screen"\nwindows = 1\n'
        '[levels]\nladder = [{ bits = 2, group_size = 64, rounding = "gptq" }, { bits = 4, group_size = 64, rounding = "gptq" },'
        ' { bits = 8, group_size = 0 }]\n'
    )
    shape = shapes["llama-3-8b"]
    plan = plan_of(shape, arena=str(arena))
    database = plan.database
    assert database.declared and [level.name for level in database.levels] == ["gptq-w2-g64-asym", "gptq-w4-g64-asym", "rtn-w8-g0-asym"]
    assert database.float32_bytes == 3 * 4 * shape.linear_weights
    assert database.bytes == pytest.approx(shape.linear_weights * ((2 + 18 / 64) + (4 + 20 / 64) + 8) / 8, rel=1e-3)
    build = next(e for e in plan.estimates if e.name == "build the level database")
    gptq = sum(RATES.gptq_seconds(i.out_features, i.in_features) for i in shape.facts.linears)
    expected = 2 * gptq + shape.linear_weights * RATES.rtn_s_per_weight + database.bytes * RATES.level_write_s_per_byte
    assert build.seconds == pytest.approx(expected)
    assert terms(plan.memory)["level database read"] == 4 * 4096 * 14336
    screen = next(e for e in plan.estimates if e.name.startswith("screen"))
    assert screen.seconds == pytest.approx(256 * shape.forward_parameters * 1e-11 + 4 * shape.linear_weights * 1e-9)


def test_levels_with_no_packed_form_are_sized_as_float32(shapes, tmp_path):
    arena = tmp_path / "mixed.toml"
    arena.write_text(
        'name = "mixed"\nwindow_tokens = 256\n[[stages]]\nname = "screen"\nwindows = 1\n'
        '[levels]\nladder = [{ bits = 3, group_size = 64, rounding = "hqq" }, { bits = 8, group_size = 0, format = "fp8_e4m3" }]\n'
    )
    shape = shapes["llama-3.2-1b"]
    plan = plan_of(shape, arena=str(arena))
    hqq, fp8 = plan.database.levels
    assert hqq.packed and hqq.bytes == pytest.approx(shape.linear_weights * (3 + 32 / 64) / 8, rel=1e-6)  # fp16 zeros
    assert not fp8.packed and fp8.bytes == fp8.float32_bytes == 4 * shape.linear_weights
    text = render_plan(plan)
    assert "float32: no packed form for this format yet" in text and text.count("no packed form") == 1


def test_times_are_rates_times_work(shapes):
    small, large = shapes["llama-3.2-1b"], shapes["llama-3-8b"]
    arena = load_arena("smollm2-default")
    tokens = arena.stages[0].windows * arena.window_tokens
    for shape in (small, large):
        estimates = {e.name.split(" (")[0]: e.seconds for e in plan_of(shape).estimates}
        assert estimates["screen a candidate"] == pytest.approx(tokens * shape.forward_parameters * 1e-11 + shape.linear_weights * 1e-9)
        references = reference_windows(arena) * arena.window_tokens
        assert estimates["base references"] == pytest.approx(references * shape.forward_parameters * 1e-11)
    screen = {shape: next(e.seconds for e in plan_of(shape).estimates if e.name.startswith("screen")) for shape in (small, large)}
    assert screen[large] / screen[small] == pytest.approx(large.forward_parameters / small.forward_parameters, rel=0.1)
    one, two = (next(e.seconds for e in plan_of(large, workers=w).estimates if e.name.startswith("search")) for w in (1, 2))
    assert one == pytest.approx(2 * two)


def test_cuda_rates_are_an_assumption_said_as_one(shapes):
    cpu, cuda = plan_of(shapes["llama-3-8b"]), plan_of(shapes["llama-3-8b"], device="cuda:1")
    assert cuda.device == "cuda:1" and cuda.compute_dtype == "bf16"
    assert "ASSUMED, not measured" in cuda.rates and "ASSUMED" not in cpu.rates
    assert cuda.estimates[0].seconds < cpu.estimates[0].seconds / 100


def test_the_8b_does_not_fit_16_gib_whole_and_needs_the_sequential_path(shapes):
    plan = plan_of(shapes["llama-3-8b"], device="cuda", gpu_memory=16 * GIB)
    assert not plan.fit.whole_model and plan.fit.layer_by_layer
    assert "sequential (layer-by-layer) path is needed" in plan.fit.message
    assert "sequential (layer-by-layer) path is needed" in render_plan(plan)
    roomy = plan_of(shapes["llama-3.2-1b"], device="cuda", gpu_memory=80 * GIB)
    assert roomy.fit.whole_model and "fits" in roomy.fit.message
    assert plan_of(shapes["llama-3-8b"], device="cuda").fit is None  # no memory given, nothing claimed


def test_the_packaged_rates_load_and_are_positive():
    rates, document = load_rates()
    assert rates.forward_s_per_token_param > 0 and rates.rtn_s_per_weight > 0 and rates.level_read_s_per_byte > 0
    assert document["model"] == "smollm2-135m" and "measured on" in rates.source


def test_a_broken_rates_file_is_one_line(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text('{"machine": "x"}')
    with pytest.raises(UserError, match="rewrite it with bench/rates.py"):
        load_rates(path)


@pytest.mark.parametrize(("text", "expected"), [("16GiB", 16 * GIB), ("40GB", 40 * 10**9), ("80G", 80 * GIB), ("1.5TiB", int(1.5 * 2**40)), ("24576 MiB", 24 * GIB)])
def test_memory_sizes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["16", "16XB", "-1G", "0GiB", "", "GiB", "1KiB"])
def test_bad_memory_sizes_name_the_option_and_the_fix(text):
    with pytest.raises(UserError, match=r"--gpu-memory .* e\.g\. --gpu-memory 16GiB"):
        parse_memory(text)


def test_devices():
    assert parse_device("cpu") == Device("cpu") and parse_device("cuda") == Device("cuda") and parse_device("CUDA:1") == Device("cuda", 1)
    for bad in ("gpu", "cpu:0", "cuda:x", "cuda:"):
        with pytest.raises(UserError, match="--device cpu, cuda or cuda:N"):
            parse_device(bad)


def test_cli_bad_gpu_memory_exits_2_naming_the_option_and_the_fix(config_dirs, capsys):
    assert main(["plan", "--model", str(config_dirs["llama-3-8b"]), "--device", "cuda", "--gpu-memory", "16XB"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("agentqat plan: error: --gpu-memory '16XB'") and "16GiB" in error and "\n" not in error
    assert main(["plan", "--model", str(config_dirs["llama-3-8b"]), "--gpu-memory", "16GiB"]) == 2
    assert "add --device cuda" in capsys.readouterr().err


def test_cli_prints_the_plan_from_a_config_only_directory(config_dirs, capsys):
    assert main(["plan", "--model", str(config_dirs["llama-3-8b"]), "--device", "cuda", "--gpu-memory", "16GiB"]) == 0
    text = capsys.readouterr().out
    assert "8,030,261,248 parameters" in text and "sequential (layer-by-layer) path is needed" in text and "ASSUMED" in text
    assert main(["plan", "--model", str(config_dirs["llama-3.2-1b"]), "--json", "--matches", "10"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["parameters"] == 1_235_814_400 and document["memory"]["total"] > document["sequential"]["total"]
    assert document["estimates"][-1]["name"] == "search of 10 matches"
