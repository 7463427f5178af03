"""A match: (strategy, arena, stage, seed, window set) -> MatchResult, on a Workbench loaded once per worker.

Nothing here raises for a bad strategy or a broken model: invalid documents, NaN/Inf, fp16 overflow,
collapse, exceptions and overlong matches all come back as a MatchResult with their outcome and message.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Mapping

import torch

from agentqat.arena.config import Arena, Stage
from agentqat.arena.engine_costs import load_profile, strategy_engine_cost
from agentqat.arena.quality import Reference, compare, reference_of
from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import Cost, MatchResult, Quality
from agentqat.arena.tasks import (
    ClozeSet,
    Question,
    cloze_accuracy,
    cloze_items,
    degenerate_share,
    load_questions,
    qa_exact_match,
    qualifying_questions,
)
from agentqat.data import load_corpus, sample_windows, tokenize
from agentqat.device import calibration_on, place_model, placement
from agentqat.engines.levels import EngineFiles, embedding_values, engine_level, fixed_bytes, level_values, linear_bits_within
from agentqat.engines.measure import EngineWorkspace
from agentqat.errors import UserError
from agentqat.levels import LevelDatabase, ladder_configs, open_database
from agentqat.levels.head import head_blocks
from agentqat.models import load_model
from agentqat.progress import Reporter, phase
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT
from agentqat.strategy.apply import COMPUTE_DTYPES, LayerCache, QuantizedLinear, embedding_applied, strategy_applied
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.calibration import Calibration, calibration_key, load_or_collect
from agentqat.strategy.document import Strategy, StrategyError, parse_strategy
from agentqat.strategy.resolve import module_needs_calibration, needs_calibration, resolve_strategy

CLOZE_ITEMS = 48
CLOZE_CONTEXT_TOKENS = 128
DEGENERATE_SHARE = 0.5  # more than half of the QA generations looping on one or two tokens is a collapse


class _Timeout(Exception):
    pass


class Workbench:
    """What one worker loads once per arena: model, tokens, base references, calibrations, layer cache. Its long
    work (converting and loading the model, base references, collecting calibration statistics) is reported as
    phases to `reporter`."""

    def __init__(self, arena: Arena, worker: str = "local", reporter: Reporter | None = None):
        torch.set_num_threads(arena.compute_threads)
        self.arena = arena
        self.worker = worker
        self.reporter = reporter
        self.placement = placement(arena.device, arena.sequential, setting=f"arena {arena.name}: device")
        self.loaded = load_model(arena.model, self.placement.dtype, reporter)
        place_model(self.loaded.model, self.placement)
        corpus = load_corpus(arena.corpus)
        self.corpus_source = corpus.source
        self.eval_ids = tokenize(self.loaded.tokenizer, corpus.evaluation)
        self.calibration_ids = tokenize(self.loaded.tokenizer, corpus.calibration)
        self.heldout_text = corpus.heldout
        self.cache = LayerCache()
        self._references: dict[tuple, Reference] = {}
        self._calibrations: dict[int, Calibration] = {}
        self._cloze: dict[int, tuple[ClozeSet, float]] = {}
        self._questions: list[Question] | None = None
        self._levels: LevelDatabase | None = None
        self._engine = None  # the engine's workspace (agentqat.engines.measure), for an [engine] arena
        self._embedding: dict[str, torch.Tensor] | None = None
        self.engine_profile = load_profile(arena.deploy, arena.model)  # None unless a vllm-* target was measured

    def windows(self, stage: Stage, seed: int, window_set: int) -> torch.Tensor:
        """Returns the evaluation windows of a stage's window set; all stages' sets are disjoint per seed."""
        offset = 0
        for earlier in self.arena.stages:
            if earlier.name == stage.name:
                break
            offset += earlier.windows * earlier.window_sets
        first = offset + window_set * stage.windows
        return sample_windows(self.eval_ids, self.arena.window_tokens, stage.windows, seed, first, self.loaded.bos.window_token)

    def reference(self, stage: Stage, seed: int, window_set: int) -> Reference:
        """Returns the base model's log-probabilities on a window set (computed once per worker)."""
        key = (stage.name, seed, window_set)
        if key not in self._references:
            self._references[key] = reference_of(self.loaded.model, self.windows(stage, seed, window_set), sequential=self.placement.sequential)
        return self._references[key]

    def _calibration_tokens(self, windows: int) -> tuple[torch.Tensor, str]:
        """Returns the calibration windows of a budget and the key of the statistics collected on them."""
        tokens = sample_windows(
            self.calibration_ids, self.arena.window_tokens, windows, self.arena.seed, bos=self.loaded.bos.window_token
        )
        return tokens, calibration_key(self.loaded.facts.name, self.loaded.directory, self.corpus_source, tokens, self.placement.dtype)

    def calibration(self, windows: int) -> Calibration:
        """Returns calibration statistics from `windows` calibration windows (cached on disk per budget)."""
        if windows not in self._calibrations:
            tokens, key = self._calibration_tokens(windows)
            collected = load_or_collect(self.loaded.model, key, tokens, self.reporter, self.placement.sequential)
            self._calibrations[windows] = calibration_on(collected, self.placement.weights)
        return self._calibrations[windows]

    def levels(self) -> LevelDatabase | None:
        """Returns the arena's level database (None without a ladder), building the levels missing on disk first
        (the phase "building the level database"; another worker building meanwhile is waited for)."""
        if self.arena.levels is not None and self._levels is None:
            ladder = ladder_configs(self.arena.levels.ladder, self.loaded.facts)
            if any(module_needs_calibration(config) for config in ladder):
                calibration = self.calibration(self.arena.calibration_windows)
            else:  # levels that read no statistics (llama.cpp's read its imatrix) are keyed by the windows alone
                calibration = Calibration(self._calibration_tokens(self.arena.calibration_windows)[1], {})
            engine_weights = self._engine_level_weights if self.arena.engine is not None else None
            self._levels = open_database(self.loaded.model, self.loaded.facts.name, calibration, ladder, self.reporter, engine_weights, self.placement.weights)
        return self._levels

    def _engine_level_file(self, type_name: str):
        """Returns llama.cpp's level file of `type_name` for this arena (made on first use)."""
        if self._engine is None:
            self._engine = EngineWorkspace(self.arena.model, self.arena.corpus, self.reporter)
        embedding = self.arena.engine.embedding
        return engine_level(self._engine, type_name, embedding, self.arena.calibration_windows, self.arena.window_tokens)

    def engine_files(self) -> EngineFiles:
        """Returns the [engine]'s files: base GGUF, importance matrix and the level file of each GGUF type of the ladder
        and of the embedding's type."""
        ladder = self.arena.levels.ladder if self.arena.levels is not None else ()
        types = [ENGINE_TYPE_OF_FORMAT[gene.format].type_name for gene in ladder if gene.format in ENGINE_TYPE_OF_FORMAT]
        paths = {type_name: self._engine_level_file(type_name) for type_name in [*types, self.arena.engine.embedding]}
        workspace = self._engine
        chunks, context = self.arena.calibration_windows, self.arena.window_tokens
        return EngineFiles(workspace.engine, workspace.base(), workspace.imatrix(chunks, context), self.arena.engine.embedding, paths,
                           self._head_blocks())  # fmt: skip

    def _head_blocks(self) -> dict:
        """Returns {head module: its GGML blocks by GPTQ} for an [engine] with embedding_rounding gptq, else {}."""
        if self.arena.engine is None or self.arena.engine.embedding_rounding != "gptq":
            return {}
        tokens, key = self._calibration_tokens(self.arena.calibration_windows)
        return head_blocks(self.loaded.model, self.loaded.facts.name, key, tokens, self.arena.engine.embedding, self.reporter)

    def _engine_level_weights(self, config) -> dict[str, torch.Tensor]:
        """Returns every linear module's weight at an engine-made level, as llama.cpp's file holds it."""
        path = self._engine_level_file(ENGINE_TYPE_OF_FORMAT[config.weight.format].type_name)
        return level_values(path, [info.name for info in self.loaded.facts.linears])

    def check_file_budget(self) -> None:
        """Returns None when the [engine]'s file_bytes (if any) hold a file whose linear weights spend bits_budget;
        UserError naming the largest bits_budget that fits otherwise."""
        engine = self.arena.engine
        if engine is None or engine.file_bytes is None:
            return
        linears = self.loaded.facts.linears
        fixed = fixed_bytes(self._engine_level_file(engine.embedding), [info.name for info in linears])
        within = linear_bits_within(engine.file_bytes, fixed, sum(info.in_features * info.out_features for info in linears))
        if self.arena.bits_budget > within + 1e-9:
            raise UserError(
                f"arena {self.arena.name}: bits_budget {self.arena.bits_budget} makes a GGUF file larger than file_bytes "
                f"{engine.file_bytes:,} ({fixed:,} bytes are metadata, norms and the {engine.embedding} embedding)",
                f"set bits_budget to at most {within:.4f} or raise file_bytes",
            )

    def engine_embedding(self) -> dict[str, torch.Tensor]:
        """Returns the token embedding (and an untied output head) at the [engine]'s type, as its GGUF holds them
        (the head's by GPTQ where the [engine] says so; {} without an [engine]): every match of the arena plays
        with them."""
        if self.arena.engine is not None and self._embedding is None:
            made = embedding_values(self._engine_level_file(self.arena.engine.embedding))
            self._embedding = made | {name: blocks.values() for name, blocks in self._head_blocks().items()}
        return self._embedding or {}

    def cloze(self, seed: int) -> tuple[ClozeSet, float]:
        """Returns the cloze items for `seed` and the base model's accuracy on them."""
        if seed not in self._cloze:
            bos = self.loaded.bos.window_token
            items = cloze_items(self.loaded.tokenizer, self.heldout_text, CLOZE_ITEMS, CLOZE_CONTEXT_TOKENS, seed, bos)
            self._cloze[seed] = (items, cloze_accuracy(self.loaded.model, items)[0])
        return self._cloze[seed]

    def questions(self) -> list[Question]:
        """Returns the packaged questions that the base model answers correctly."""
        if self._questions is None:
            self._questions = qualifying_questions(
                self.loaded.model, self.loaded.tokenizer, load_questions(), bos=self.loaded.bos.window_token
            )
        return self._questions

    def prepare(self, seed: int) -> None:
        """Computes everything the base model contributes to every stage for `seed`, before any match (the phase
        "base references", one step per window set, cloze set and question set), and the level database; UserError
        when an [engine] arena's bits_budget does not keep its file within file_bytes."""
        self.levels()
        self.check_file_budget()
        stages = self.arena.stages
        window_sets = sum(stage.window_sets for stage in stages)
        cloze, qa = any(stage.cloze for stage in stages), any(stage.qa for stage in stages)
        detail = f"the base model on {window_sets} window sets" + ", cloze items" * cloze + ", questions" * qa
        with phase(self.reporter, "base references", total=window_sets + cloze + qa, detail=detail) as step:
            for stage in stages:
                for window_set in range(stage.window_sets):
                    self.reference(stage, seed, window_set)
                    step()
            if cloze:
                self.cloze(seed)
                step()
            if qa:
                self.questions()
                step()

    def play(self, request: MatchRequest, overrides: Mapping[str, torch.Tensor] | None = None) -> MatchResult:
        """Returns the result of one match; never raises for anything the strategy or model does. `overrides`
        (module name -> weight, e.g. polished) replace those modules' quantized weights.

        The match's time limit counts from when the base model's references are ready (`prepare`).
        """
        started = time.perf_counter()
        stage = self.arena.stage(request.stage)
        name = str(request.document.get("name", "unnamed")) if isinstance(request.document, dict) else "unnamed"
        hits, misses = self.cache.hits, self.cache.misses
        common = dict(
            strategy_id=request_id(request),
            strategy_name=name,
            arena=self.arena.name,
            stage=stage.name,
            seed=request.seed,
            window_set=request.window_set,
            tokens=stage.windows * self.arena.window_tokens,
            worker=self.worker,
        )
        try:
            strategy = parse_strategy(request.document)
            fields = self._evaluate(strategy, stage, request, overrides)
        except StrategyError as error:
            fields = dict(outcome="invalid", message="; ".join(error.lines))
        except _Timeout as error:
            fields = dict(outcome="timeout", message=str(error))
        except Exception as error:  # a crash of any kind is a recorded result, not a crash of the run
            fields = dict(outcome="error", message=f"{type(error).__name__}: {error}")
        return MatchResult(
            **common,
            **fields,
            cache_hits=self.cache.hits - hits,
            cache_misses=self.cache.misses - misses,
            seconds=time.perf_counter() - started,
        )

    def _check_time(self, started: float, phase: str) -> None:
        elapsed = time.perf_counter() - started
        if elapsed > self.arena.match_seconds:
            raise _Timeout(f"{phase} ended after {elapsed:.0f} s, over the arena's {self.arena.match_seconds:.0f} s")

    def _evaluate(self, strategy: Strategy, stage: Stage, request: MatchRequest, overrides: Mapping[str, torch.Tensor] | None) -> dict:
        model = self.loaded.model
        resolved = resolve_strategy(strategy, self.loaded.facts)
        calibration = None
        if needs_calibration(resolved):
            calibration = self.calibration(request.calibration_windows or self.arena.calibration_windows)
        # Everything measured on the base model comes first: the strategy replaces its modules below.
        reference = self.reference(stage, request.seed, request.window_set)
        # Tasks do not depend on the window set: they run once per strategy and stage, with window set 0.
        run_tasks = request.window_set == 0
        cloze_set, base_cloze = self.cloze(request.seed) if stage.cloze and run_tasks else (None, None)
        questions = self.questions() if stage.qa and run_tasks else []
        started = time.perf_counter()  # the limit is on the strategy's work, not on the base model's
        quantize_started = time.perf_counter()
        levels = self.levels()
        with embedding_applied(model, self.engine_embedding()), strategy_applied(model, resolved, calibration, self.cache, levels, overrides) as applied:
            quantize_seconds = time.perf_counter() - quantize_started
            self._check_time(started, "quantization")
            with _OverflowWatch(model, COMPUTE_DTYPES[resolved.compute_dtype]) as overflow:
                evaluate_started = time.perf_counter()
                comparison = compare(model, reference, sequential=self.placement.sequential)
                evaluate_seconds = time.perf_counter() - evaluate_started
            self._check_time(started, "evaluation")
            cloze = qa = None
            degenerate = 0.0
            if comparison.finite and cloze_set is not None:
                cloze = cloze_accuracy(model, cloze_set)[0]
            if comparison.finite and questions:
                answers = qa_exact_match(model, self.loaded.tokenizer, questions, bos=self.loaded.bos.window_token)
                qa, degenerate = answers.score, degenerate_share(answers.token_ids)
            self._check_time(started, "tasks")
        bits = strategy_bits(resolved, self.loaded.facts, applied.outlier_counts)
        engine = None if self.engine_profile is None else strategy_engine_cost(resolved, self.loaded.facts, self.engine_profile)
        quality = Quality(
            perplexity=comparison.perplexity if comparison.finite else math.inf,
            kl=comparison.kl.mean().item(),
            top1=comparison.top1.mean().item(),
            window_nll=tuple(comparison.nll.tolist()),
            window_kl=tuple(comparison.kl.tolist()),
            base_perplexity=reference.perplexity,
            cloze_accuracy=cloze,
            base_cloze_accuracy=base_cloze,
            qa_exact_match=qa,
        )
        tokens = reference.windows.numel()
        cost = Cost(
            bits_per_weight=bits.bits_per_weight,
            model_bytes=bits.model_bytes,
            bytes_per_token=bits.model_bytes,
            peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            simulated_latency_ms_per_token=1000 * evaluate_seconds / tokens,
            quantize_seconds=quantize_seconds,
            evaluate_seconds=evaluate_seconds,
            engine=engine,
        )
        outcome, message = verdict(comparison.finite, overflow.modules, quality, self.arena.collapse_ratio, degenerate)
        return dict(outcome=outcome, message=message, quality=quality, cost=cost)


def verdict(
    finite: bool, overflowed: list[str], quality: Quality, collapse_ratio: float, degenerate: float
) -> tuple[str, str]:
    """Returns the outcome and message of an evaluated match: overflow, nan, collapse or ok."""
    if overflowed:
        return "overflow", f"fp16 overflow (inf/NaN) in {len(overflowed)} linear outputs, first {overflowed[0]}"
    if not finite:
        return "nan", "NaN or Inf in the logits"
    ratio = quality.perplexity / quality.base_perplexity
    if ratio > collapse_ratio:
        return "collapse", f"perplexity {quality.perplexity:.1f} is {ratio:.1f}x the base's {quality.base_perplexity:.1f}"
    if degenerate > DEGENERATE_SHARE:
        return "collapse", f"{degenerate:.0%} of the answers loop on one or two tokens"
    return "ok", ""


class _OverflowWatch:
    """Records the quantized linear modules whose fp16 outputs hold an inf or NaN (fp16 compute only)."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype):
        self.model = model
        self.active = compute_dtype == torch.float16
        self.modules: list[str] = []
        self.handles = []

    def __enter__(self) -> _OverflowWatch:
        if self.active:
            for name, module in self.model.named_modules():
                if isinstance(module, QuantizedLinear):
                    self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def check(_module, _inputs, output):
            if name not in self.modules and not torch.isfinite(output).all():
                self.modules.append(name)

        return check

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

