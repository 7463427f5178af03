"""Peak memory of one evaluator worker, term by term, estimated from a model's shape and an arena (no weights).

Whole-model path (what a worker does today): the base weights and a quantized copy of every linear module (at
least the layer cache's bound) in the compute dtype, the base reference probabilities of every window set (fp16),
every calibration Hessian (float64 while collected, float32 kept), one batch's activations and log-probabilities,
and one module read from the level database. Layer-by-layer path: one decoder layer's weights and Hessians at a
time, the embeddings and head, and the hidden states of one window set.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentqat.arena.config import Arena
from agentqat.plan.shape import ModelShape, hessian_entries
from agentqat.strategy.apply import LayerCache

BATCH_WINDOWS = 4  # windows per forward pass in agentqat.arena.quality (reference_of, compare)
LOGIT_COPIES = 3  # logits, log-probabilities (or the references as float) and their product, float32 each
REFERENCE_BYTES = 2 + 4 + 8  # per position: fp16 probabilities per vocabulary entry; float32 entropy, int64 argmax
HESSIAN_COLLECT_BYTES = 8 + 4  # float64 accumulator and its float32 result, both alive at the end of collection
HESSIAN_KEPT_BYTES = 4
ACTIVATION_WIDTHS = 4  # hidden-size tensors alive in a decoder layer (residual, normed, attention output, q)
MLP_WIDTHS = 3  # intermediate-size tensors (gate, up, their product)


@dataclass(frozen=True)
class MemoryTerm:
    """One part of a worker's peak memory."""

    name: str
    bytes: int
    detail: str


@dataclass(frozen=True)
class WorkerMemory:
    """A worker's peak memory by term, on one path ("whole model" or "layer by layer")."""

    path: str
    terms: tuple[MemoryTerm, ...]

    @property
    def total(self) -> int:
        return sum(term.bytes for term in self.terms)


def batch_windows(arena: Arena) -> int:
    """Returns the windows of the largest forward batch a match runs."""
    return min(BATCH_WINDOWS, max(stage.windows for stage in arena.stages))


def reference_windows(arena: Arena) -> int:
    """Returns the windows whose base references a worker keeps: every stage's window sets."""
    return sum(stage.windows * stage.window_sets for stage in arena.stages)


def _common_terms(shape: ModelShape, arena: Arena, dtype_bytes: int) -> list[MemoryTerm]:
    """Returns the terms both paths share: references, one batch's activations and log-probabilities."""
    facts, tokens, batch = shape.facts, arena.window_tokens, batch_windows(arena)
    references = reference_windows(arena)
    activations = batch * tokens * (ACTIVATION_WIDTHS * facts.hidden_size + MLP_WIDTHS * shape.intermediate_size) * dtype_bytes
    attention = batch * shape.attention_heads * tokens * tokens * 4  # eager attention scores, float32
    return [
        MemoryTerm("base references", references * (tokens - 1) * (facts.vocab_size * 2 + 12),
                   f"{references} windows x {tokens - 1} positions x {facts.vocab_size:,} vocabulary, fp16"),
        MemoryTerm("activations", activations + attention, f"the largest layer on {batch} windows of {tokens} tokens"),
        MemoryTerm("log-probabilities", LOGIT_COPIES * batch * tokens * facts.vocab_size * 4,
                   f"{LOGIT_COPIES} float32 copies of {batch} x {tokens} x {facts.vocab_size:,}"),
    ]  # fmt: skip


def _level_read(shape: ModelShape, arena: Arena) -> list[MemoryTerm]:
    if arena.levels is None:
        return []
    largest = max(info.in_features * info.out_features for info in shape.facts.linears)
    return [MemoryTerm("level database read", 4 * largest, "the largest module at float32 (files mapped, page cache shared)")]


def whole_model_memory(shape: ModelShape, arena: Arena, dtype_bytes: int) -> WorkerMemory:
    """Returns a worker's peak memory with the whole model on its device, as workers run today."""
    facts = shape.facts
    quantized = max(shape.linear_weights * dtype_bytes, LayerCache().max_bytes)
    hessians = hessian_entries(facts)
    terms = [
        MemoryTerm("weights", facts.num_parameters * dtype_bytes, f"{facts.num_parameters:,} parameters x {dtype_bytes} bytes"),
        MemoryTerm("quantized copies", quantized, "every linear module, at least the layer cache's bound"),
        MemoryTerm("calibration Hessians", hessians * HESSIAN_COLLECT_BYTES,
                   f"{hessians:,} entries (in_features^2 per distinct input), float64 + float32 while collected; for GPTQ, AWQ, SmoothQuant, LLM.int8"),
        *_common_terms(shape, arena, dtype_bytes),
        *_level_read(shape, arena),
    ]  # fmt: skip
    return WorkerMemory("whole model", tuple(terms))


def layer_memory(shape: ModelShape, arena: Arena, dtype_bytes: int) -> WorkerMemory:
    """Returns a worker's peak memory on the layer-by-layer (sequential) path: one decoder layer on the device."""
    facts = shape.facts
    layer_weights = max(sum(i.in_features * i.out_features for i in facts.linears if i.layer == layer) for layer in range(facts.num_layers))
    others = facts.num_parameters - shape.linear_weights  # embeddings, head, norms
    hessians = max(hessian_entries(facts, layer) for layer in range(facts.num_layers))
    window_set = max(stage.windows for stage in arena.stages) * arena.window_tokens
    terms = [
        MemoryTerm("weights", (2 * layer_weights + others) * dtype_bytes, "one decoder layer (base and quantized), embeddings, head, norms"),
        MemoryTerm("calibration Hessians", hessians * HESSIAN_COLLECT_BYTES, "one decoder layer's, float64 + float32 while collected"),
        MemoryTerm("hidden states", 2 * window_set * facts.hidden_size * dtype_bytes, f"a layer's input and output on {window_set:,} tokens"),
        *_common_terms(shape, arena, dtype_bytes),
        *_level_read(shape, arena),
    ]  # fmt: skip
    return WorkerMemory("layer by layer", tuple(terms))
