"""Windows open with the model's BOS token when the model expects one (its GGUF, tokenizer config or chat template
says so), and only then; runs recorded with other windows are never extended."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from agentqat.arena.quality import perplexity
from agentqat.cli import main
from agentqat.data import sample_windows, tokenize, window_count
from agentqat.models import bos_policy, load_model

BOS_ID = 1  # tiny_models: <|im_start|>


def test_windows_with_bos_keep_their_length_and_never_share_a_text_token():
    ids = torch.arange(100, 100 + 64 * 10)
    windows = sample_windows(ids, 64, 10, seed=3, bos=BOS_ID)
    assert windows.shape == (10, 64) and (windows[:, 0] == BOS_ID).all()
    text = windows[:, 1:].flatten().tolist()
    assert len(set(text)) == len(text) == 10 * 63
    assert window_count(len(ids), 64, BOS_ID) == 10 and window_count(len(ids), 64) == 10
    assert window_count(64 * 10 - 1, 64, BOS_ID) == 10 and window_count(64 * 10 - 1, 64) == 9
    without = sample_windows(ids, 64, 10, seed=3)
    assert (without[:, 0] != BOS_ID).all()


@pytest.mark.parametrize(
    ("make", "kwargs", "adds", "source"),
    [
        ("llama", {}, False, "neither the tokenizer"),
        ("llama", {"add_bos_token": True}, True, "tokenizer_config.json"),
        ("llama", {"add_bos_token": False}, False, "tokenizer_config.json"),
        ("gguf", {}, False, "tokenizer.ggml.add_bos_token"),
        ("gguf", {"add_bos_token": True}, True, "tokenizer.ggml.add_bos_token"),
    ],
)
def test_the_bos_decision_comes_from_the_models_own_metadata(make_tiny_llama, make_tiny_gguf, make, kwargs, adds, source):
    path = (make_tiny_llama if make == "llama" else make_tiny_gguf)(**kwargs)
    policy = bos_policy(str(path))
    assert (policy.add, policy.token_id) == (adds, BOS_ID) and source in policy.source
    assert policy.window_token == (BOS_ID if adds else None)


def test_the_builtin_smollm2_reads_windows_without_bos():
    policy = bos_policy("smollm2-135m")
    assert not policy.add and "add_bos_token" in policy.source


def test_info_scores_windows_that_open_with_bos_on_a_model_that_expects_it(make_tiny_llama, small_corpus_file, capsys):
    """The tiny model's outputs depend on its first token: the figure `info` prints is the perplexity of windows
    that open with BOS, not of the same text without it."""
    directory = make_tiny_llama(add_bos_token=True, weight_std=0.25)
    args = ["info", "--model", str(directory), "--corpus", str(small_corpus_file), "--windows", "2", "--window-tokens", "64", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bos"] == {"windows_open_with_bos": True, "token_id": BOS_ID, "decided_by": "tokenizer_config.json: add_bos_token"}
    loaded = load_model(str(directory))
    from agentqat.data import load_corpus

    ids = tokenize(loaded.tokenizer, load_corpus(str(small_corpus_file)).evaluation)
    with_bos = perplexity(loaded.model, sample_windows(ids, 64, 2, 0, bos=BOS_ID))
    without = perplexity(loaded.model, sample_windows(ids, 64, 2, 0))
    assert report["base_perplexity"]["value"] == pytest.approx(with_bos, rel=1e-6)
    assert abs(with_bos - without) > 1e-3 * without


def test_a_run_recorded_without_bos_is_not_extended_with_windows_that_have_it(make_tiny_llama, small_corpus_file, tmp_path):
    from agentqat.arena.config import load_arena
    from agentqat.arena.probes import arena_key
    from agentqat.errors import UserError
    from agentqat.rundir.manifest import Manifest, check_windows, windows_bos

    expects = load_arena("smollm2-default").model_copy(update={"model": str(make_tiny_llama(add_bos_token=True))})
    plain = expects.model_copy(update={"model": str(make_tiny_llama(add_bos_token=False))})
    assert windows_bos(expects) == BOS_ID and windows_bos(plain) is None
    recorded = Manifest(kind="baseline", arena=expects, stage="screen", seed=0, requests=1, window_bos=None)
    with pytest.raises(UserError, match="start with text.*now open with token 1"):
        check_windows(tmp_path, recorded)
    assert check_windows(tmp_path, recorded.model_copy(update={"window_bos": BOS_ID})).window_bos == BOS_ID

    def key_without_bos(arena):  # the key every arena had before windows could open with BOS
        fields = json.dumps(arena.model_dump(mode="json", exclude={"source", "compute_threads"}), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:16]

    assert arena_key(plain) == key_without_bos(plain)  # caches of models without BOS stay valid
    assert arena_key(expects) != key_without_bos(expects)  # caches made before the fix are never read
