"""llama.cpp in the loop, on the tiny real Llama as an F32 GGUF file and the pinned llama.cpp's real tools (built once
per machine by the `llama_cpp` fixture): stock files, engine-made levels read back exactly, an [engine] arena's
matches, its GGUF export byte for byte, and the engine's own measurement."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from gguf import GGUFReader

from agentqat.arena.config import Arena, Engine, Levels, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.cli import main
from agentqat.engines import engines_found
from agentqat.engines.gguf_tensors import module_values
from agentqat.engines.llama_cpp import (
    ENGINES_ENV,
    LOG_FLUSH_PATCH,
    PATCHED_TOOLS,
    find_llama_cpp,
    parse_kl_output,
    patch_log_flush,
    require_llama_cpp,
)
from agentqat.engines.measure import EngineWorkspace
from agentqat.errors import UserError
from agentqat.strategy.document import WeightGene

LADDER = tuple(WeightGene(bits=bits, group_size=32, format=fmt, rounding="imatrix")
               for fmt, bits in (("gguf_q4_0", 4), ("gguf_iq4_nl", 4), ("gguf_q5_0", 5), ("gguf_q8_0", 8)))  # fmt: skip


def engine_arena(model, corpus, embedding="Q8_0") -> Arena:
    return Arena(
        name="tiny-gguf", model=str(model), corpus=str(corpus), window_tokens=64, calibration_windows=4, bits_budget=6.0,
        stages=(Stage(name="screen", windows=2),), levels=Levels(ladder=LADDER), deploy="gguf",
        engine=Engine(embedding=embedding),
    )  # fmt: skip


def uniform(fmt: str, bits: int) -> dict:
    return {"name": f"uniform-{fmt}", "default": {"weight": {"bits": bits, "group_size": 32, "format": fmt, "rounding": "imatrix"}}}


@pytest.fixture(scope="module")
def workspace(llama_cpp, make_tiny_gguf, small_corpus_file):
    return EngineWorkspace(str(make_tiny_gguf(weight_std=0.25)), str(small_corpus_file))


@pytest.fixture(scope="module")
def bench(llama_cpp, make_tiny_gguf, small_corpus_file):
    workbench = Workbench(engine_arena(make_tiny_gguf(weight_std=0.25), small_corpus_file))
    workbench.prepare(0)
    return workbench


def test_engines_lists_the_built_llama_cpp_and_says_how_to_get_a_missing_one(llama_cpp, tmp_path, monkeypatch, capsys):
    found = {engine.name.split(" ")[0]: engine for engine in engines_found()}
    assert found["llama.cpp"].path == str(llama_cpp.bin_dir) and "0.3.36" in found["llama.cpp"].version
    assert main(["engines", "--json"]) == 0
    assert any(entry["name"].startswith("llama.cpp") and entry["path"] for entry in json.loads(capsys.readouterr().out))
    monkeypatch.setenv(ENGINES_ENV, str(tmp_path))
    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "agentqat engines --build" in out
    assert find_llama_cpp() is None
    with pytest.raises(UserError, match="llama.cpp 0.3.36 is not built on this machine. run `agentqat engines --build`"):
        require_llama_cpp()


def test_the_tools_are_the_pinned_tree_with_the_log_flush_patch(llama_cpp):
    output = subprocess.run([str(llama_cpp.tool("llama-quantize")), "--help"], capture_output=True, text=True).stdout
    assert "--tensor-type" in output and "--imatrix" in output and "IQ4_NL" in output
    for name in PATCHED_TOOLS:
        assert (llama_cpp.source / name).read_text().count(LOG_FLUSH_PATCH) == 1


def test_the_log_flush_patch_applies_once_and_refuses_another_ending(tmp_path):
    for name in PATCHED_TOOLS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("int main() {\n    llama_backend_free();\n\n    return 0;\n}\n")
    patch_log_flush(tmp_path)
    patch_log_flush(tmp_path)
    assert (tmp_path / PATCHED_TOOLS[0]).read_text().count(LOG_FLUSH_PATCH) == 1
    (tmp_path / PATCHED_TOOLS[1]).write_text("int main() { return 1; }\n")
    with pytest.raises(ValueError, match="log-flush patch does not apply"):
        patch_log_flush(tmp_path)


def test_kl_figures_are_read_from_llama_perplexitys_closing_lines():
    output = (
        "Mean PPL(Q)                   :  32.855935 ±   0.9\nMean PPL(base)                :  30.398846 ±   0.8\n"
        "Mean    KLD:   0.101345 ±   0.002\nSame top p: 82.614 ± 0.3 %\n"
    )
    figures = parse_kl_output(output, 16, 512)
    assert (figures.mean_kl, figures.same_top, figures.perplexity, figures.base_perplexity) == pytest.approx((0.101345, 0.82614, 32.855935, 30.398846), rel=1e-12)
    with pytest.raises(UserError, match="printed no"):
        parse_kl_output("nothing", 16, 512)


def test_a_stock_file_is_made_by_llama_quantize_and_measured_by_llama_perplexity(workspace):
    plain, with_imatrix = workspace.stock("Q4_0", False), workspace.stock("q4_0", True)
    tensors = [{t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(str(path)).tensors} for path in (plain, with_imatrix)]
    assert {name: kind for name, (kind, _) in tensors[0].items()} == {name: kind for name, (kind, _) in tensors[1].items()}
    assert tensors[0] != tensors[1]  # the imatrix changes the rounding, not the types
    figures = [workspace.measure(path, "evaluation", chunks=4, context=64) for path in (plain, with_imatrix)]
    for measured, path in zip(figures, (plain, with_imatrix)):
        assert measured.kl.chunks == 4 and 0 < measured.kl.mean_kl < 1 and 0 < measured.kl.same_top <= 1
        assert measured.file_bytes == path.stat().st_size and 4 < measured.bits_per_weight < 32
    with pytest.raises(UserError, match="unknown stock type 'Q9_9'"):
        workspace.stock("Q9_9", False)


def test_the_base_gguf_read_back_is_the_model_transformers_loads(workspace, bench):
    names = [info.name for info in bench.loaded.facts.linears]
    values = module_values(GGUFReader(str(workspace.base())), names)  # q/k rows un-permuted to the model's order
    for name in names:
        assert torch.equal(values[name], bench.loaded.model.get_submodule(name).weight.detach().float()), name


def test_an_engine_arena_plays_llama_quantizes_levels_and_its_embedding(bench):
    database = bench.levels()
    name = bench.loaded.facts.linears[0].name
    q4, q8 = (database.weight(name, config, database.calibration_key) for config in database.levels[:1] + database.levels[-1:])
    base = bench.loaded.model.get_submodule(name).weight.detach()
    assert (q4 - base).abs().mean() > (q8 - base).abs().mean() > 0
    embedding = bench.engine_embedding()["model.embed_tokens"]
    assert not torch.equal(embedding, bench.loaded.model.model.embed_tokens.weight)  # Q8_0, not the base's F32
    results = {fmt: bench.play(MatchRequest(uniform(fmt, bits), "screen", 0)) for fmt, bits in (("gguf_q4_0", 4), ("gguf_q8_0", 8))}
    assert all(result.outcome == "ok" for result in results.values()), results
    assert results["gguf_q4_0"].quality.kl > results["gguf_q8_0"].quality.kl > 0  # Q8_0 linears + Q8_0 embedding
    assert torch.equal(bench.loaded.model.model.embed_tokens.weight, bench.loaded.model.model.embed_tokens.weight)
    outside = bench.play(MatchRequest(uniform("gguf_iq4_nl", 4) | {"rules": [{"layers": "0", "modules": ["mlp"], "weight": {"rounding": "rtn", "format": "gguf_q4_1", "bits": 4}}]}, "screen", 0))
    assert outside.outcome == "ok"  # a reference-rounded Q4_1 (not a level) is quantized on the fly


def test_a_gguf_export_is_the_scored_model_byte_for_byte_with_its_llama_quantize_command(bench, tmp_path, capsys):
    from agentqat.export import export, prepare_source

    document = uniform("gguf_iq4_nl", 4) | {"rules": [{"layers": "1", "modules": ["mlp.down_proj"], "weight": {"format": "gguf_q8_0", "bits": 8}}]}
    out = export(prepare_source(document, bench.arena), "gguf", tmp_path / "out", "gguf")
    reader = GGUFReader(str(out / "model.gguf"))
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "IQ4_NL"
    assert types["token_embd.weight"] == "Q8_0"
    command = (out / "llama-quantize.sh").read_text()
    assert "--imatrix imatrix.gguf --pure --token-embedding-type Q8_0" in command and "^blk\\.1\\.ffn_down\\.weight$=Q8_0" in command and (out / "imatrix.gguf").is_file()
    # The engine measures what the arena scored: its figures on the exported file.
    assert main(["engine-eval", str(out / "model.gguf"), "--model", bench.arena.model, "--corpus", bench.arena.corpus,
                 "--text", "evaluation", "--chunks", "4", "--context", "64", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["file_bytes"] == (out / "model.gguf").stat().st_size and report["kl"]["mean_kl"] > 0


def test_export_refuses_what_llama_quantize_did_not_make(bench, tmp_path):
    from agentqat.export import export, prepare_source
    from agentqat.export.base import ExportError

    document = {"name": "int", "default": {"weight": {"bits": 4, "group_size": 32, "symmetric": True}}}
    with pytest.raises(ExportError, match="rounding imatrix"):
        export(prepare_source(document, bench.arena), "gguf", tmp_path / "out", "gguf")


def test_an_engine_arena_deploys_gguf(small_corpus_file):
    with pytest.raises(ValueError, match='set deploy = "gguf"'):
        Arena(name="x", corpus=str(small_corpus_file), stages=(Stage(name="s", windows=1),), engine=Engine())


@pytest.mark.parametrize("type_name", ["Q3_K", "IQ4_XS", "Q6_K"])
def test_a_256_block_level_is_what_llama_quantize_stores_and_costs_its_exact_bytes(llama_cpp, make_tiny_gguf, small_corpus_file, type_name):
    """On the tiny model with MLP width 256, down_proj (input 256) takes the k-quant itself and every 64-wide module
    llama.cpp's fallback; the bits the arena counts are the file's bytes."""
    from agentqat.engines.levels import engine_level, level_tensors
    from agentqat.models import load_facts
    from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
    from agentqat.quant.ggml_engine import ENGINE_TYPES, stored_type
    from agentqat.strategy.bits import module_bits
    from agentqat.strategy.resolve import ModuleConfig

    model = make_tiny_gguf(intermediate=256, weight_std=0.25)
    path = engine_level(EngineWorkspace(str(model), str(small_corpus_file)), type_name, "Q8_0", chunks=4, context=64)
    facts = load_facts(str(model))
    tensors = level_tensors(path, [info.name for info in facts.linears])
    fmt = next(t for t in ENGINE_TYPES if t.type_name == type_name)
    config = ModuleConfig(WeightQuant(bits=fmt.bits, group_size=32, format=fmt.format, rounding="imatrix"), ActivationQuant(), OutlierPolicy())
    kinds = set()
    for info in facts.linears:
        _, tensor = tensors[info.name]
        assert tensor.tensor_type.name == stored_type(type_name, info.in_features), info.name
        assert module_bits(config, info, 0).total == 8 * int(tensor.n_bytes), info.name
        kinds.add(tensor.tensor_type.name)
    assert type_name in kinds and len(kinds) == 2  # down_proj at the type, the rest at its fallback
    assert {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}["token_embd.weight"] == "Q8_0"


def test_fold_awq_writes_a_model_llama_cpp_computes_as_the_one_it_came_from(llama_cpp, make_tiny_gguf, small_corpus_file, tmp_path, capsys):
    model = make_tiny_gguf(weight_std=0.25)
    arena = tmp_path / "arena.toml"
    arena.write_text(f'name = "tiny-fold"\nmodel = "{model}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
                     'calibration_windows = 4\nbits_budget = 6.0\n\n[[stages]]\nname = "screen"\nwindows = 2\n')  # fmt: skip
    out = tmp_path / "folded"
    assert main(["fold-awq", "--arena", str(arena), "--type", "q4_0", "--out", str(out)]) == 0
    summary = json.loads((out / "awq-fold.json").read_text())
    assert summary["type"] == "Q4_0" and len(summary["groups"]) == 3 * 2
    assert all(group["proxy_error"] <= group["proxy_error_unscaled"] for group in summary["groups"])
    assert main(["fold-awq", "--arena", str(arena), "--out", str(out)]) == 2  # not an empty directory
    assert main(["fold-awq", "--arena", str(arena), "--type", "Q4_1", "--out", str(tmp_path / "other")]) == 2
    assert main(["fold-awq", "--arena", str(arena), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "other")]) == 2
    capsys.readouterr()
    original = EngineWorkspace(str(model), str(small_corpus_file))
    folded_base = EngineWorkspace(str(out), str(small_corpus_file)).base()
    assert original.measure(folded_base, "evaluation", chunks=4, context=64).kl.mean_kl < 1e-4  # the same function
    from transformers import AutoModelForCausalLM

    directory = AutoModelForCausalLM.from_pretrained(str(out))
    names = [name for name, module in directory.named_modules() if isinstance(module, torch.nn.Linear) and "layers" in name]
    in_file = module_values(GGUFReader(str(folded_base)), names)
    for name in names:  # the file's fold is the directory's
        assert torch.allclose(in_file[name], directory.get_submodule(name).weight.detach(), rtol=1e-5, atol=1e-6), name
    args = ["engine-eval", "--model", str(out), "--corpus", str(small_corpus_file), "--stock", "Q4_0", "--imatrix",
            "--reference", str(model), "--text", "evaluation", "--chunks", "4", "--context", "64", "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] == str(model) and 0 < report["kl"]["mean_kl"] < 1


def test_a_strategy_carried_to_another_model_is_exported_there_as_the_engine_stores_it(llama_cpp, make_tiny_gguf, small_corpus_file, tmp_path, capsys):
    source, target = make_tiny_gguf(weight_std=0.25), make_tiny_gguf(weight_std=0.25, num_layers=4)
    arena_file = tmp_path / "arena.toml"
    arena_file.write_text(
        f'name = "tiny-gguf"\nmodel = "{source}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\ncalibration_windows = 4\n'
        'bits_budget = 6.0\ndeploy = "gguf"\n[engine]\nembedding = "Q8_0"\nfile_bytes = 1000000\n[[stages]]\nname = "screen"\nwindows = 2\n'
        '[levels]\nladder = [{ bits = 4, group_size = 32, format = "gguf_iq4_nl", rounding = "imatrix" },'
        ' { bits = 8, group_size = 32, format = "gguf_q8_0", rounding = "imatrix" }]\n'
    )  # fmt: skip
    strategy = tmp_path / "s.json"
    strategy.write_text(json.dumps(uniform("gguf_iq4_nl", 4) | {"rules": [{"layers": "1", "modules": ["mlp.down_proj"], "weight": {"format": "gguf_q8_0", "bits": 8}}]}))
    carried = tmp_path / "carried.json"
    assert main(["transfer", str(strategy), "--from", str(source), "--to", str(target), "--out", str(carried)]) == 0
    out = tmp_path / "out"
    assert main(["export", "--strategy", str(carried), "--arena", str(arena_file), "--model", str(target), "--format", "gguf", "--out", str(out)]) == 0
    types = {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(str(out / "model.gguf")).tensors}
    # Layer 1 of 2 spans layers 2 and 3 of 4 at the same relative depth.
    assert [types[f"blk.{layer}.ffn_down.weight"] for layer in range(4)] == ["IQ4_NL", "IQ4_NL", "Q8_0", "Q8_0"]
    assert types["blk.3.attn_q.weight"] == "IQ4_NL" and types["token_embd.weight"] == "Q8_0"
    capsys.readouterr()
    assert main(["engine-eval", str(out / "model.gguf"), "--model", str(target), "--corpus", str(small_corpus_file),
                 "--text", "evaluation", "--chunks", "4", "--context", "64", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["file_bytes"] == (out / "model.gguf").stat().st_size
    assert main(["export", "--polished", str(tmp_path), "--model", str(target), "--format", "gguf", "--out", str(tmp_path / "x")]) == 2
    assert "--model with --polished" in capsys.readouterr().err
