"""Builds small real models inside the test session: no hub, no download, a few hundred milliseconds each.

- `write_tiny_llama(directory, ...)`: a randomly initialised `LlamaForCausalLM` saved with `save_pretrained`,
  with a byte-level BPE tokenizer trained here on the packaged news corpus and a ChatML chat template.
- `write_tiny_gguf(path, ...)`: the same model (same arguments and seed give the same weights) written as a
  llama GGUF file with `gguf.GGUFWriter`, in llama.cpp's conventions (tensor names, q/k row permutation,
  tokenizer as `tokenizer.ggml.*` metadata), that transformers loads with `gguf_file=`.
- `tiny_gguf_reference(...)`: the model transformers must load from that GGUF file (weights rounded
  through F16/Q8_0 where the file stores them so).

Weights come from an explicit `torch.Generator`; the global RNG is left untouched (the module constructor
runs under `torch.random.fork_rng`), so building a model never changes what other tests draw.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

import agentqat

CORPUS = Path(agentqat.__file__).parent / "corpora" / "lee-news.calibration.txt"
TRAINING_CHARS = 32_000  # the tokenizer is trained on the first ~32 KB of the corpus (about 0.2 s)

# Same layout as SmolLM2's: 0 is <|endoftext|> (unknown), 1 <|im_start|> (bos), 2 <|im_end|> (eos); a pad of its own.
UNK, BOS, EOS, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_VOCAB = 512  # 256 bytes + 4 special tokens + 252 merges
CONTEXT_LENGTH = 512
RMS_NORM_EPS = 1e-5
ROPE_THETA = 10_000.0

# transformers name (inside model.layers.N.) -> llama.cpp name (inside blk.N.)
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
TENSOR_TYPES = ("F32", "F16", "Q8_0")


# --------------------------------------------------------------------------------------------- tokenizer
@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's split regex and byte alphabet: what transformers' GGUF converter rebuilds for tokenizer "gpt2"
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS.read_text(encoding="utf-8")[:TRAINING_CHARS]
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab:
        raise ValueError(f"BPE training gave {tokenizer.get_vocab_size()} tokens, asked for {vocab}")
    return tokenizer.to_str()


def tiny_tokenizer(vocab: int = DEFAULT_VOCAB):
    """Returns a fresh `PreTrainedTokenizerFast`: byte-level BPE with `vocab` tokens, specials, chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab)),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=CONTEXT_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ----------------------------------------------------------------------------------------------- model
def tiny_llama_config(
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = DEFAULT_VOCAB,
    tie_word_embeddings: bool = False,
):
    from transformers import LlamaConfig

    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise ValueError(f"hidden {hidden} must split into {heads} heads of even size, heads into {kv_heads} groups")
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=CONTEXT_LENGTH,
        rms_norm_eps=RMS_NORM_EPS,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def build_tiny_llama(
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = DEFAULT_VOCAB,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    weight_std: float = 0.02,
):
    """Returns a `LlamaForCausalLM` in eval mode whose weights depend only on the arguments.

    Matrices are N(0, weight_std^2) (embeddings N(0, 1), so logits are not flat; with weight_std 0.25 the
    output depends strongly on the linear layers, so quantizing them moves KL and top-1 measurably); norm weights 1 + N(0, 0.1^2), so a
    norm loaded into the wrong slot shows. Drawn in sorted parameter-name order from `torch.Generator(seed)`.
    """
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(num_layers, hidden, intermediate, heads, kv_heads, vocab, tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):  # the constructor's own init draws from the global RNG
        model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):  # tied weights appear once
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if parameter.ndim == 1:
                parameter.copy_(1.0 + 0.1 * values)
            elif name == "model.embed_tokens.weight":
                parameter.copy_(values)
            else:
                parameter.copy_(weight_std * values)
    return model.eval()


def write_tiny_llama(
    directory: Path,
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = DEFAULT_VOCAB,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    weight_std: float = 0.02,
    add_bos_token: bool | None = None,
) -> Path:
    """Saves a tiny Llama (safetensors, fp32) and its tokenizer into `directory`; returns `directory`.
    `add_bos_token` (when given) is written into the tokenizer's config, as models that expect BOS have it.

    Defaults: 2 layers, hidden 64, MLP 128, 4 heads of 16, 2 KV heads, 512 tokens. Every linear's in_features
    (64 or 128) is divisible by group sizes 32 and 64; pass hidden=96 for a model where 64 does not divide.
    """
    directory = Path(directory)
    model = build_tiny_llama(num_layers, hidden, intermediate, heads, kv_heads, vocab, tie_word_embeddings, seed, weight_std)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tiny_tokenizer(vocab).save_pretrained(directory)
    if add_bos_token is not None:
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "add_bos_token": add_bos_token}, indent=2))
    return directory


# ------------------------------------------------------------------------------------------------ GGUF
def hf_to_gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (llama.cpp's tensor names)."""
    stem, suffix = name.rsplit(".", 1)
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    _, _, index, rest = stem.split(".", 3)  # model.layers.N.<rest>
    return f"blk.{index}.{_LAYER_TENSORS[rest]}.{suffix}"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` of q/k rows (rotary halves -> interleaved pairs, per head).

    transformers undoes it with `LlamaTensorProcessor._reverse_permute_weights` (ggml.py / the legacy GGUF loader).
    """
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, rows, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_type(name: str, array: np.ndarray, tensor_type: str) -> str:
    """llama.cpp keeps 1-D tensors (the norms) in F32 whatever the file type."""
    if array.ndim == 1:
        return "F32"
    if tensor_type == "Q8_0" and array.shape[-1] % 32:
        raise ValueError(f"{name}: Q8_0 needs rows divisible by 32, got shape {array.shape}")
    return tensor_type


def _stored(array: np.ndarray, tensor_type: str) -> np.ndarray:
    """`array` as the file stores it (for `GGUFWriter.add_tensor`)."""
    import gguf

    if tensor_type == "F32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if tensor_type == "F16":
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)


def _round_trip(array: np.ndarray, tensor_type: str) -> np.ndarray:
    """The values a reader gets back for `array` stored as `tensor_type`."""
    import gguf

    if tensor_type == "F32":
        return array
    if tensor_type == "F16":
        return array.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(_stored(array, tensor_type), gguf.GGMLQuantizationType.Q8_0).reshape(array.shape)


def write_tiny_gguf(
    path: Path,
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = DEFAULT_VOCAB,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    tensor_type: str = "F32",
    name: str = "tiny-llama",
    chat_template: bool = True,
    add_bos_token: bool = False,
    weight_std: float = 0.02,
) -> Path:
    """Writes the tiny Llama of `build_tiny_llama(same arguments)` as a llama GGUF file; returns `path`.

    `tensor_type`: "F32", "F16" or "Q8_0" for the matrices (norms stay F32, as llama.cpp writes them).
    `tie_word_embeddings=True` leaves out `output.weight`, which is how a GGUF says the head is tied.
    `name` goes to general.name (do not put "mistral" in it: transformers then loads it as Mistral).
    transformers loads it with `from_pretrained(path.parent, gguf_file=path.name)`; the weights it gets are
    those of `tiny_gguf_reference(same arguments)`.
    """
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type must be one of {TENSOR_TYPES}, got {tensor_type!r}")
    path = Path(path)
    model = build_tiny_llama(num_layers, hidden, intermediate, heads, kv_heads, vocab, tie_word_embeddings, seed, weight_std)
    tokenizer = _trained_tokenizer_json(vocab)
    config = model.config

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                          "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_block_count(num_layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    _add_tokenizer(writer, tokenizer, chat_template, add_bos_token)

    for hf_name, parameter in model.state_dict().items():
        if tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # a tied head is not written
        array = parameter.detach().to(torch.float32).numpy()
        gguf_name = hf_to_gguf_name(hf_name)
        if ".attn_q." in gguf_name:
            array = llama_cpp_permute(array, heads)
        elif ".attn_k." in gguf_name:
            array = llama_cpp_permute(array, kv_heads)
        kind = _tensor_type(gguf_name, array, tensor_type)
        writer.add_tensor(gguf_name, _stored(array, kind), raw_dtype=gguf.GGMLQuantizationType[kind])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer_json: str, chat_template: bool = True, add_bos_token: bool = False) -> None:
    """The byte-level BPE as llama.cpp stores a "gpt2" tokenizer: tokens by id, types, merges, special ids."""

    import gguf

    model = json.loads(tokenizer_json)["model"]
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    assert [index for _, index in by_id] == list(range(len(by_id)))
    tokens = [token for token, _ in by_id]
    special = set(SPECIAL_TOKENS)
    types = [gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # not in transformers' table of split regexes: GPT-2's regex, as trained
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_unk_token_id(tokens.index(UNK))
    writer.add_pad_token_id(tokens.index(PAD))
    writer.add_add_bos_token(add_bos_token)
    writer.add_add_space_prefix(False)
    if chat_template:
        writer.add_chat_template(CHAT_TEMPLATE)


def tiny_gguf_reference(
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = DEFAULT_VOCAB,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    tensor_type: str = "F32",
):
    """The model transformers must load from `write_tiny_gguf(same arguments)`: `build_tiny_llama`'s weights
    rounded the way the file stores them (the q/k permutation acts on rows, Q8_0 blocks lie along rows,
    so rounding commutes with it)."""
    model = build_tiny_llama(num_layers, hidden, intermediate, heads, kv_heads, vocab, tie_word_embeddings, seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            array = parameter.detach().numpy()
            kind = _tensor_type(name, array, tensor_type)
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(_round_trip(array, kind), dtype=np.float32)))
    return model
