"""Tests of agentqat.models on tiny models built in the session (and, marked slow, on the real default model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_models import CHAT_TEMPLATE, build_tiny_llama, tiny_gguf_reference, write_tiny_gguf

from agentqat.defaults import CACHE_ENV
from agentqat.errors import UserError
from agentqat.models import (
    LoadedModel,
    gguf_to_hf_directory,
    load_facts,
    load_model,
    model_facts,
    quantizable_linears,
    resolve_model_directory,
)

TEXT = "The Prime Minister said on Sunday that 42 people were hurt in the bushfires near Sydney."
LINEAR_SUFFIXES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def expected_linears(num_layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2):
    """{qualified name: (layer, in_features, out_features)} of a tiny Llama."""
    kv = kv_heads * (hidden // heads)
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (hidden, intermediate),
        "mlp.up_proj": (hidden, intermediate),
        "mlp.down_proj": (intermediate, hidden),
    }
    return {
        f"model.layers.{layer}.{suffix}": (layer, *shapes[suffix])
        for layer in range(num_layers)
        for suffix in LINEAR_SUFFIXES
    }


def expected_parameters(num_layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512, tied=False):
    """The parameter count of a tiny Llama, counted by hand (a tied head counts once)."""
    linears = expected_linears(1, hidden, intermediate, heads, kv_heads).values()
    per_layer = sum(i * o for _, i, o in linears) + 2 * hidden  # the matrices and two norms
    return vocab * hidden * (1 if tied else 2) + num_layers * per_layer + hidden


def assert_facts(loaded: LoadedModel, spec: str, num_layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2,
                 vocab=512, tied=False):
    facts = loaded.facts
    assert facts.name == spec
    assert facts.architecture == "llama"
    assert facts.num_layers == num_layers
    assert facts.hidden_size == hidden
    assert facts.vocab_size == vocab
    expected = expected_linears(num_layers, hidden, intermediate, heads, kv_heads)
    assert len(facts.linears) == 7 * num_layers
    assert {info.name: (info.layer, info.in_features, info.out_features) for info in facts.linears} == expected
    parameters = expected_parameters(num_layers, hidden, intermediate, heads, kv_heads, vocab, tied)
    assert facts.num_parameters == parameters
    unique = {id(p): p.numel() for _, p in loaded.model.named_parameters(remove_duplicate=False)}
    assert facts.num_parameters == sum(unique.values())
    assert facts.bytes_fp32 == 4 * parameters and facts.bytes_bf16 == 2 * parameters
    last = f"model.layers.{num_layers - 1}.mlp.down_proj"
    assert (facts.linear(last).layer, facts.linear(last).in_features) == (num_layers - 1, intermediate)


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(state[name], expected[name])]
    assert not different, f"weights differ from what was written: {different}"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty $AGENTQAT_CACHE_DIR for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def cache_entries(cache: Path) -> list[str]:
    """What the cache's models/ folder holds, lock files left out (staging folders start with a dot)."""
    models = cache / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


# ------------------------------------------------------------------------------------------- HF directory
def test_cache_dir_is_the_session_tmp(agentqat_cache_dir):
    assert os.environ[CACHE_ENV] == str(agentqat_cache_dir)
    assert Path.home() / ".cache" not in agentqat_cache_dir.parents


def test_load_hf_directory(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    assert loaded.directory == tiny_llama_dir
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert_facts(loaded, str(tiny_llama_dir))
    assert_same_weights(loaded.model, build_tiny_llama())

    tokenizer = loaded.tokenizer
    ids = tokenizer(TEXT).input_ids
    assert tokenizer.decode(ids) == TEXT
    assert len(ids) < 0.6 * len(TEXT)  # merges learned from the corpus, not bytes
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert tokenizer.pad_token_id == 3 and len(tokenizer) == 512
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512) and torch.isfinite(logits).all()


def test_load_hf_directory_bf16(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.facts.num_parameters == expected_parameters()


@pytest.mark.parametrize(
    "variant",
    [
        {"tie_word_embeddings": True},
        {"hidden": 96, "intermediate": 192, "heads": 4, "kv_heads": 2, "num_layers": 3},  # g64 does not divide 96
        {"heads": 4, "kv_heads": 4},  # no grouped-query attention
    ],
    ids=["tied", "hidden96", "mha"],
)
def test_facts_of_variants(make_tiny_llama, variant):
    variant = dict(variant)
    directory = make_tiny_llama(**variant)
    loaded = load_model(str(directory))
    tied = variant.pop("tie_word_embeddings", False)
    assert_facts(loaded, str(directory), tied=tied, **variant)
    everything = sum(t.numel() for t in loaded.model.state_dict().values())  # counts a tied head twice
    assert loaded.facts.num_parameters == everything - (512 * loaded.facts.hidden_size if tied else 0)


def test_quantizable_linears_leave_out_embeddings_and_head(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir)).model
    linears = quantizable_linears(model)
    assert set(linears) == set(expected_linears())
    assert "lm_head" not in linears and all(isinstance(m, torch.nn.Linear) for m in linears.values())
    assert model_facts(model, "x").linears == load_model(str(tiny_llama_dir)).facts.linears


def test_load_facts_without_weights(tiny_llama_dir, make_tiny_llama, tiny_gguf_path, fresh_cache):
    assert load_facts(str(tiny_llama_dir)) == load_model(str(tiny_llama_dir)).facts
    tied = str(make_tiny_llama(tie_word_embeddings=True))
    assert load_facts(tied) == load_model(tied).facts
    assert load_facts(str(tiny_gguf_path)) == load_model(str(tiny_gguf_path)).facts  # converts, then reads config
    with pytest.raises(UserError, match="unknown model"):
        load_facts("nonsense")


# ---------------------------------------------------------------------------------------------------- GGUF
def test_load_gguf(tiny_gguf_path, tiny_llama_dir, fresh_cache):
    loaded = load_model(str(tiny_gguf_path))
    assert loaded.directory.parent == fresh_cache / "models"
    assert loaded.directory.name.startswith("tiny-llama-")
    assert (loaded.directory / "config.json").is_file() and (loaded.directory / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((loaded.directory / "config.json").read_text())
    assert_facts(loaded, str(tiny_gguf_path))
    assert_same_weights(loaded.model, tiny_gguf_reference())  # q/k un-permuted, names mapped, head untied

    original = load_model(str(tiny_llama_dir))
    ids = original.tokenizer(TEXT).input_ids
    assert loaded.tokenizer(TEXT).input_ids == ids  # the tokenizer rebuilt from GGUF metadata is the same BPE
    assert loaded.tokenizer.decode(ids) == TEXT
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    assert (loaded.tokenizer.bos_token, loaded.tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(torch.tensor([ids])).logits, original.model(torch.tensor([ids])).logits)


@pytest.mark.parametrize(
    "variant",
    [{"tensor_type": "F16"}, {"tensor_type": "Q8_0", "tie_word_embeddings": True}, {"hidden": 96, "intermediate": 192}],
    ids=["f16", "q8_0-tied", "hidden96"],
)
def test_load_gguf_variants(make_tiny_gguf, fresh_cache, variant):
    path = make_tiny_gguf(**variant)
    loaded = load_model(str(path))
    assert_same_weights(loaded.model, tiny_gguf_reference(**variant))
    shape = {k: v for k, v in variant.items() if k != "tensor_type"}
    tied = shape.pop("tie_word_embeddings", False)
    assert_facts(loaded, str(path), tied=tied, **shape)


def test_gguf_is_converted_once_and_cached(tiny_gguf_path, tmp_path, fresh_cache):
    gguf = tmp_path / "copy.gguf"
    shutil.copy2(tiny_gguf_path, gguf)
    first = resolve_model_directory(str(gguf))
    assert cache_entries(fresh_cache) == [first.name]  # no staging folder left behind
    before = snapshot(first)

    started = time.perf_counter()
    again = resolve_model_directory(str(gguf))
    assert again == first
    assert time.perf_counter() - started < 0.5  # no transformers load
    assert gguf_to_hf_directory(gguf, first.name) == first
    assert snapshot(first) == before  # same files, not rewritten
    assert cache_entries(fresh_cache) == [first.name]
    assert load_model(str(gguf)).directory == first

    # A changed file gets a new cache entry instead of the stale conversion.
    write_tiny_gguf(gguf, seed=1)
    changed = resolve_model_directory(str(gguf))
    assert changed != first and cache_entries(fresh_cache) == sorted([first.name, changed.name])
    assert_same_weights(load_model(str(gguf)).model, build_tiny_llama(seed=1))


def test_a_gguf_without_a_chat_template_is_given_the_builtins_and_one_with_keeps_its_own(make_tiny_gguf, tiny_gguf_path, fresh_cache):
    from transformers import AutoTokenizer

    from agentqat.models import BUILTIN_MODELS, GEMMA3_CHAT_TEMPLATE

    assert BUILTIN_MODELS["gemma3-270m"].chat_template == GEMMA3_CHAT_TEMPLATE  # its GGUF (the base model) has none
    bare = gguf_to_hf_directory(make_tiny_gguf(chat_template=False), "bare", chat_template=GEMMA3_CHAT_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(bare)
    assert tokenizer.chat_template == GEMMA3_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>user\nS\n\nhi<end_of_turn>\n<start_of_turn>model\n")
    own = gguf_to_hf_directory(tiny_gguf_path, "own", chat_template=GEMMA3_CHAT_TEMPLATE)
    assert AutoTokenizer.from_pretrained(own).chat_template == CHAT_TEMPLATE


def test_conversion_and_loading_are_reported_as_phases(tiny_gguf_path, tmp_path, fresh_cache):
    from test_progress import Recorder

    gguf = tmp_path / "reported.gguf"
    shutil.copy2(tiny_gguf_path, gguf)
    first, again = Recorder(), Recorder()
    load_model(str(gguf), reporter=first)
    load_model(str(gguf), reporter=again)
    assert [event[:2] for event in first.events] == [
        ("start", "converting the model"),
        ("end", "converting the model"),
        ("start", "loading the model"),
        ("end", "loading the model"),
    ]
    assert "reported.gguf" in first.events[0][3]
    assert [event[:2] for event in again.events] == [("start", "loading the model"), ("end", "loading the model")]
    facts = Recorder()
    load_facts(str(gguf), reporter=facts)
    assert facts.events == []  # converted already; facts load no weights


def test_concurrent_conversions_in_threads(tiny_gguf_path, tmp_path, fresh_cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    gguf = tmp_path / "shared.gguf"
    shutil.copy2(tiny_gguf_path, gguf)
    original = AutoModelForCausalLM.from_pretrained
    conversions = []

    def counting(*args, **kwargs):
        if kwargs.get("gguf_file"):
            conversions.append(threading.get_ident())
            time.sleep(0.3)  # widen the window in which a second converter would slip in
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counting)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def convert():
        try:
            barrier.wait()
            results.append(resolve_model_directory(str(gguf)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert len(conversions) == 1
    assert cache_entries(fresh_cache) == [results[0].name]
    monkeypatch.undo()
    assert_same_weights(load_model(str(gguf)).model, tiny_gguf_reference())


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    conversions = []

    def counting(*args, **kwargs):
        if kwargs.get("gguf_file"):
            conversions.append(1)
            time.sleep(0.3)
        return original(*args, **kwargs)

    AutoModelForCausalLM.from_pretrained = counting
    from agentqat.models import resolve_model_directory

    gguf, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    print(json.dumps({"directory": str(resolve_model_directory(gguf)), "conversions": len(conversions)}))
    """
)


def test_concurrent_conversions_in_processes(tiny_gguf_path, tmp_path, fresh_cache):
    gguf = tmp_path / "shared.gguf"
    shutil.copy2(tiny_gguf_path, gguf)
    go = tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(gguf), str(tmp_path / f"ready{index}"), str(go)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{index}").exists() for index in range(2)):
            assert time.monotonic() < deadline and all(child.poll() is None for child in children), "children died"
            time.sleep(0.02)
        go.touch()  # both start converting at once
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert reports[0]["directory"] == reports[1]["directory"]
    assert sum(report["conversions"] for report in reports) == 1
    directory = Path(reports[0]["directory"])
    assert cache_entries(fresh_cache) == [directory.name]
    assert_same_weights(load_model(str(gguf)).model, tiny_gguf_reference())


# -------------------------------------------------------------------------------------------------- errors
def raises_user_error(spec: str, *fragments: str) -> UserError:
    with pytest.raises(UserError) as caught:
        load_model(spec)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    assert "\n" not in message, "a UserError is one line"
    return caught.value


def test_missing_path(tmp_path, monkeypatch):
    raises_user_error(str(tmp_path / "no-such-model"), "does not exist", str(tmp_path / "no-such-model"))
    raises_user_error("~/no-such-agentqat-model-dir", "does not exist")
    monkeypatch.chdir(tmp_path)
    raises_user_error("./no-such-model", "does not exist")  # looks like org/name, but it is a path
    raises_user_error("../no-such-model", "does not exist")
    raises_user_error(str(tmp_path / "missing.gguf"), "does not exist", "missing.gguf")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    raises_user_error(str(tmp_path), "no config.json")


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00" * 64)
    raises_user_error(str(path), "not a .gguf file")


def test_unknown_name():
    error = raises_user_error("nonsense", "unknown model 'nonsense'", "smollm2-135m")
    assert error.fix


def test_hub_id_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # it is read once, at import
    started = time.perf_counter()
    error = raises_user_error("someorg/nonexistent-model", "someorg/nonexistent-model", "offline", "local")
    assert time.perf_counter() - started < 10  # no network retries
    assert isinstance(error.__cause__, OSError)


def _corrupt_files(tiny_gguf_path: Path, directory: Path) -> dict[str, Path]:
    import gguf

    valid = tiny_gguf_path.read_bytes()
    files = {
        "text": b"this is not a GGUF file at all\n" * 20,
        "magic-then-garbage": b"GGUF" + bytes(range(256)) * 4,
        "truncated-header": valid[:2000],
        "truncated-tensors": valid[: len(valid) - 4096],
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = directory / f"{name}.gguf"
        paths[name].write_bytes(data)
    # A well-formed GGUF of an architecture transformers does not know.
    paths["unknown-architecture"] = directory / "unknown-architecture.gguf"
    writer = gguf.GGUFWriter(str(paths["unknown-architecture"]), "no-such-arch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(8, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return paths


def test_corrupt_gguf(tiny_gguf_path, tmp_path, fresh_cache):
    for name, path in _corrupt_files(tiny_gguf_path, tmp_path).items():
        with pytest.raises(UserError) as caught:
            load_model(str(path))
        message = str(caught.value)
        assert "cannot read GGUF file" in message and path.name in message, (name, message)
        assert cache_entries(fresh_cache) == [], f"{name}: a failed conversion left {cache_entries(fresh_cache)}"
    # The lock files left behind do not block a valid conversion.
    assert load_model(str(tiny_gguf_path)).facts.num_layers == 2


# ---------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_default_model(tmp_path_factory, monkeypatch):
    cache = os.environ.get("AGENTQAT_TEST_MODEL_CACHE") or str(tmp_path_factory.mktemp("model-cache"))
    monkeypatch.setenv(CACHE_ENV, cache)
    loaded = load_model("smollm2-135m")
    assert loaded.directory == Path(cache) / "models" / "smollm2-135m"
    facts = loaded.facts
    assert facts.architecture == "llama"
    assert facts.num_layers == 30 and facts.hidden_size == 576 and facts.vocab_size == 49152
    assert len(facts.linears) == 210
    assert facts.num_parameters == 134_515_008
    assert {info.layer for info in facts.linears} == set(range(30))
    assert facts.linear("model.layers.29.mlp.down_proj").in_features == 1536
    assert facts.linear("model.layers.0.self_attn.k_proj").out_features == 192
    ids = loaded.tokenizer("The capital of France is").input_ids
    assert loaded.tokenizer.decode(ids) == "The capital of France is"
    assert loaded.tokenizer.chat_template
    assert load_model("smollm2-135m").directory == loaded.directory  # cached: no second conversion
    assert load_facts("smollm2-135m") == facts
