"""Deployment targets: what each engine can serve, as declared tables, and the check and the repair that keep a
strategy (and a search) inside one.

    any         no constraint: the arena's fake quantization (exported as dequantized weights)
    vllm-cpu    vLLM's CPU kernels: bf16; W4A16 (int4 symmetric, group size even or per channel, layer widths
                multiples of 32); W8A8 (int8 symmetric per-channel weights, dynamic per-token int8 activations)
    vllm-cuda   vLLM's CUDA kernels: bf16; W4A16 and W8A16 (Marlin: symmetric, group 32/64/128 or per channel,
                widths multiples of 64); W8A8 int8; W8A8 fp8 (e4m3 weights per channel, per-token or per-tensor activations)
    gguf        llama.cpp's per-tensor types: 16-bit tensors; int symmetric blocks of 32 at 4, 5 and 8 bits (packed
                bit for bit into Q4_0, Q5_0, Q8_0: agentqat/export/gguf_types.py); the gguf_* block formats

A module config is servable when its weight method names the target (`Method.deploy_targets`) and one scheme of
the target's table admits it; no target serves kept fp16 outliers or SmoothQuant scales (they are not exported).
On vLLM, a fused set (q/k/v, gate/up) is one weight on the engine and takes one scheme. `problems` names every
module that breaks a rule, with the fix; `servable_layout` moves each such module to the nearest servable config
(the scheme of the same width, else the narrowest wider one; a fused set takes its cheapest shard's config), and
`target_choices` narrows what generators draw, so that every arm searches the servable space. `missing_kernels`
says which schemes this machine's build of the engine lacks (a search may still target them: winners are often
served elsewhere).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from agentqat import defaults
from agentqat.errors import UserError
from agentqat.models import LinearInfo, ModelFacts
from agentqat.quant.base import DEFAULT_ROUNDING, INT_GRID, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.quant.registry import METHODS, find
from agentqat.quant.schemes import outlier_scheme, transforms_of
from agentqat.strategy.layout import FUSED_SETS, Layout, document_of, layer_spec, layout_bits, layout_of, module_cost
from agentqat.strategy.repair import repair_layout
from agentqat.strategy.resolve import ModuleConfig, ResolvedStrategy, module_role_name
from agentqat.strategy.space import GeneChoices, SearchSpace

ANY = "any"


@dataclass(frozen=True)
class Scheme:
    """One kind of module an engine runs: weight bits and format, group sizes, symmetry and activations."""

    name: str
    weight_bits: int | None  # None: any width the weight's method stores
    weight_formats: tuple[str, ...] | None = (INT_GRID,)  # None: any but the int grid whose method names the target
    group_sizes: tuple[int, ...] | str = "any"  # "even" (or 0), or the group sizes allowed (0 = per channel)
    symmetric: bool | None = True  # None: either
    activation: ActivationQuant | tuple[ActivationQuant, ...] = ActivationQuant()

    def admits(self, config: ModuleConfig) -> bool:
        """Returns whether a module config is of this scheme."""
        weight = config.weight
        if self.weight_bits is not None and weight.bits != self.weight_bits:
            return False
        if self.weight_bits == 16:
            return config.activation == self.activation
        activations = self.activation if isinstance(self.activation, tuple) else (self.activation,)
        group_ok = (
            self.group_sizes == "any"
            or (self.group_sizes == "even" and weight.group_size % 2 == 0)
            or (isinstance(self.group_sizes, tuple) and weight.group_size in self.group_sizes)
        )
        return (
            (weight.format != INT_GRID if self.weight_formats is None else weight.format in self.weight_formats) and group_ok and self.symmetric in (None, weight.symmetric)
            and config.activation in activations
        )  # fmt: skip

    def nearest(self, config: ModuleConfig) -> ModuleConfig:
        """Returns `config` moved into this scheme, keeping what the scheme leaves free (rounding, clip, scales)."""
        if self.weight_bits == 16:
            return ModuleConfig(WeightQuant(bits=16), self.activation, OutlierPolicy())
        weight = config.weight if config.weight.format in self.weight_formats else WeightQuant(format=self.weight_formats[0])
        group = weight.group_size
        if isinstance(self.group_sizes, tuple) and group not in self.group_sizes:
            group = 0 if 0 in self.group_sizes else self.group_sizes[0]
        elif self.group_sizes == "even" and group % 2:
            group = 0
        symmetric = weight.symmetric if self.symmetric is None else self.symmetric
        weight = replace(weight, bits=self.weight_bits, group_size=group, symmetric=symmetric)
        activations = self.activation if isinstance(self.activation, tuple) else (self.activation,)
        activation = config.activation if config.activation in activations else activations[0]
        return ModuleConfig(weight, activation, OutlierPolicy())


@dataclass(frozen=True)
class Target:
    """An engine's table: its schemes, the layer widths its kernels need, whether fused sets share a scheme."""

    name: str
    engine: str
    schemes: tuple[Scheme, ...]
    width_multiple: int = 1
    fused_one_scheme: bool = False

    def scheme_of(self, config: ModuleConfig) -> Scheme | None:
        """Returns the scheme that admits the config (None: the engine cannot run it)."""
        if config.weight.bits != 16:
            method = find(config.weight.format, config.weight.rounding)
            if method is None or self.name not in method.deploy_targets:
                return None
        if self.name not in outlier_scheme(config.outliers).deploy_targets:
            return None
        if any(self.name not in t.deploy_targets for t in transforms_of(config.activation)):
            return None
        return next((scheme for scheme in self.schemes if scheme.admits(config)), None)

    def fits(self, config: ModuleConfig, in_features: int, out_features: int) -> bool:
        """Returns whether a module of this shape runs under `config` on the engine."""
        if self.scheme_of(config) is None:
            return False
        wide = in_features % self.width_multiple == 0 and out_features % self.width_multiple == 0
        return config.weight.bits == 16 or wide

    def candidates(self, config: ModuleConfig) -> list[ModuleConfig]:
        """Returns one servable config per scheme near `config` (per weight method and width for open schemes)."""
        out = []
        for scheme in self.schemes:
            if scheme.weight_bits is not None:
                out.append(scheme.nearest(config))
                continue
            for method in (m for m in METHODS.values() if self.name in m.deploy_targets and m.format != INT_GRID):
                group = method.group_sizes[0] if method.group_sizes else config.weight.group_size
                clip = method.clips[0] if method.clips else config.weight.clip
                for bits in method.bits:
                    weight = WeightQuant(bits, group, config.weight.symmetric, method.format, method.scales[0], method.rounding, clip)
                    out.append(ModuleConfig(weight, ActivationQuant(), OutlierPolicy()))
        return [candidate for candidate in out if self.scheme_of(candidate) is not None]

    def nearest(self, config: ModuleConfig, in_features: int, out_features: int) -> ModuleConfig:
        """Returns `config` when the engine runs it, else the servable config of the same weight width, else the
        narrowest wider one, else the widest; 16 bits where the module's widths fit no kernel."""
        if self.fits(config, in_features, out_features):
            return config
        candidates = [c for c in self.candidates(config) if self.fits(c, in_features, out_features)]
        bits = config.weight.bits
        same = [c for c in candidates if c.weight.bits == bits]
        wider = sorted((c for c in candidates if c.weight.bits > bits), key=lambda c: c.weight.bits)
        return (same or wider or sorted(candidates, key=lambda c: -c.weight.bits))[0]

    def describe(self) -> str:
        """Returns the schemes in words, e.g. "bf16, W4A16, W8A8"."""
        return ", ".join(scheme.name for scheme in self.schemes)


BF16 = Scheme("bf16", 16)
INT8_DYNAMIC = ActivationQuant(bits=8, format="int", granularity="per_token")
FP8_ACTIVATIONS = (ActivationQuant(bits=8, format="fp8_e4m3", granularity="per_token"),
                   ActivationQuant(bits=8, format="fp8_e4m3", granularity="per_tensor"))  # fmt: skip
MARLIN_GROUPS = (0, 32, 64, 128)

TARGETS = {
    "vllm-cpu": Target(
        "vllm-cpu", "vLLM on CPU",
        (BF16, Scheme("W4A16", 4, group_sizes="even"), Scheme("W8A8", 8, group_sizes=(0,), activation=INT8_DYNAMIC)),
        width_multiple=32, fused_one_scheme=True,
    ),
    "vllm-cuda": Target(
        "vllm-cuda", "vLLM with CUDA",
        (BF16, Scheme("W4A16", 4, group_sizes=MARLIN_GROUPS), Scheme("W8A16", 8, group_sizes=MARLIN_GROUPS),
         Scheme("W8A8-int8", 8, group_sizes=(0,), activation=INT8_DYNAMIC),
         Scheme("W8A8-fp8", 8, weight_formats=("fp8_e4m3",), group_sizes=(0,), symmetric=None, activation=FP8_ACTIVATIONS)),
        width_multiple=64, fused_one_scheme=True,
    ),
    "gguf": Target(
        "gguf", "llama.cpp (GGUF)",
        (BF16, Scheme("Q4_0", 4, group_sizes=(32,)), Scheme("Q5_0", 5, group_sizes=(32,)), Scheme("Q8_0", 8, group_sizes=(32,)),
         Scheme("block", None, weight_formats=None, symmetric=None)),
        width_multiple=32,
    ),
}  # fmt: skip
DEPLOY_CHOICES = defaults.DEPLOY_TARGETS
assert DEPLOY_CHOICES == (ANY, *TARGETS), "defaults.DEPLOY_TARGETS names the targets of this table"


def target_of(name: str) -> Target | None:
    """Returns the target named `name` (None for "any"); UserError naming the choices otherwise."""
    if name == ANY:
        return None
    if name not in TARGETS:
        raise UserError(f"unknown deploy target {name!r}", f"use one of {', '.join(DEPLOY_CHOICES)}")
    return TARGETS[name]


def cpu_has_avx512() -> bool:
    """Returns whether this CPU has AVX-512, the test vLLM's CPU build uses to pick its kernel library."""
    import torch

    return bool(torch.cpu._is_avx512_supported())


def missing_kernels(target_name: str) -> dict[str, str]:
    """Returns the target's schemes that this machine's build of its engine cannot run, each with why; {} when it
    runs them all. The tables above say what the engine serves somewhere; this says what it serves here."""
    if target_name == "vllm-cpu" and platform.machine() in ("x86_64", "AMD64") and not cpu_has_avx512():
        return {"W4A16": "on a CPU without AVX-512 vLLM runs its AVX2 kernels, which have no W4A16 GEMM (cpu_gemm_wna16)"}
    return {}


def missing_here(configs: Iterable[ModuleConfig], target_name: str) -> dict[str, str]:
    """Returns the schemes of `missing_kernels` that these module configs use, each with why ({} when none)."""
    target, missing = target_of(target_name), missing_kernels(target_name)
    used = {scheme.name for scheme in map(target.scheme_of, configs) if scheme is not None} if missing else set()
    return {name: why for name, why in missing.items() if name in used}


def describe_config(config: ModuleConfig) -> str:
    """Returns a module config in a few words, e.g. "3-bit int g64 asymmetric weights, 16-bit activations"."""
    weight, activation = config.weight, config.activation
    if weight.bits == 16:
        return "16-bit weights"
    group = f"g{weight.group_size}" if weight.group_size else "per-channel"
    symmetry = "symmetric" if weight.symmetric else "asymmetric"
    acts = "16-bit activations" if activation.bits in (None, 16) else f"{activation.bits}-bit {activation.format} {activation.granularity} activations"
    return f"{weight.bits}-bit {weight.format} {group} {symmetry} ({weight.rounding}) weights, {acts}"


def _module_problem(config: ModuleConfig, info: LinearInfo, target: Target) -> str | None:
    """Returns why the engine cannot run this module's config, with the fix (None: it can)."""
    if target.fits(config, info.in_features, info.out_features):
        return None
    engine = target.engine
    if target.name not in (outliers := outlier_scheme(config.outliers)).deploy_targets:
        return f"{outliers.kept} ({outliers.name}) are not exported to {engine}; set outliers.method none"
    for transform in transforms_of(config.activation):
        if target.name not in transform.deploy_targets:
            return f"{transform.label} scales are not exported to {engine}; remove activation.{transform.field}"
    if config.weight.bits != 16:
        method = find(config.weight.format, config.weight.rounding)
        if method is not None and target.name not in method.deploy_targets:
            served = sorted({m.format + "/" + m.rounding for m in METHODS.values() if target.name in m.deploy_targets})
            return f"{method.label} weights ({config.weight.format}, {config.weight.rounding}) do not run on {engine}; use {', '.join(served) or 'bits 16'}"
    if target.scheme_of(config) is not None:
        return (f"{info.in_features}x{info.out_features} weights: {engine} kernels need widths that are multiples of "
                f"{target.width_multiple}; keep this module at 16 bits")  # fmt: skip
    fix = describe_config(target.nearest(config, info.in_features, info.out_features))
    return f"{describe_config(config)} is none of {engine}'s schemes ({target.describe()}); for example {fix}"


def _where(infos: list[LinearInfo]) -> str:
    """Returns modules in a few words, e.g. "layers 0-3: mlp.up_proj, mlp.down_proj; layer 7: self_attn.q_proj"."""
    by_role: dict[str, list[int]] = {}
    for info in infos:
        by_role.setdefault(module_role_name(info), []).append(info.layer)
    by_layers: dict[str, list[str]] = {}
    for role, layers in by_role.items():
        by_layers.setdefault(layer_spec(layers), []).append(role)
    parts = []
    for spec, roles in by_layers.items():
        word = "layers" if ("-" in spec or "," in spec) else "layer"
        parts.append(f"{word} {spec}: {', '.join(roles)}")
    return "; ".join(parts)


def _fused_sets(facts: ModelFacts) -> list[list[int]]:
    """Returns the module indices of every fused set (q/k/v, gate/up) of every layer."""
    sets: dict[tuple[int, int], list[int]] = {}
    for index, info in enumerate(facts.linears):
        for position, members in enumerate(FUSED_SETS):
            if module_role_name(info) in members:
                sets.setdefault((info.layer, position), []).append(index)
    return [members for members in sets.values() if len(members) > 1]


def _scheme_key(config: ModuleConfig) -> tuple:
    """Returns what one engine scheme fixes: weight bits, format, group, symmetry and the activations."""
    weight = config.weight
    return weight.bits, weight.format, weight.group_size, weight.symmetric, config.activation


def unservable(resolved: ResolvedStrategy, facts: ModelFacts, target_name: str) -> dict[str, list[LinearInfo]]:
    """Returns each rule the strategy breaks under the target (the rule and its fix, in words) with the modules
    that break it; {} when the target's engine runs every module."""
    target = target_of(target_name)
    if target is None:
        return {}
    found: dict[str, list[LinearInfo]] = {}
    for info in facts.linears:
        problem = _module_problem(resolved.modules[info.name], info, target)
        if problem is not None:
            found.setdefault(problem, []).append(info)
    if target.fused_one_scheme:
        mixed = [members for members in _fused_sets(facts)
                 if len({_scheme_key(resolved.modules[facts.linears[i].name]) for i in members}) > 1]  # fmt: skip
        if mixed:
            rule = (f"{target.engine} fuses q/k/v and gate/up into one weight, so each set takes one scheme (bits, "
                    "format, group size, symmetry, activations); give the set's modules the same ones")  # fmt: skip
            found[rule] = [facts.linears[i] for members in mixed for i in members]
    return found


def problems(resolved: ResolvedStrategy, facts: ModelFacts, target_name: str) -> list[str]:
    """Returns one line per rule the strategy breaks under the target (modules, rule, fix); [] when servable."""
    return [f"{_where(infos)}: {rule}" for rule, infos in unservable(resolved, facts, target_name).items()]


def servable_layout(layout: Layout, facts: ModelFacts, target_name: str) -> Layout:
    """Returns the layout with every module the engine cannot run moved to its nearest servable config, and
    every fused set of mixed schemes given its cheapest shard's config (the layout itself when servable)."""
    target = target_of(target_name)
    if target is None:
        return layout
    configs = [target.nearest(config, info.in_features, info.out_features) for config, info in zip(layout.configs, facts.linears, strict=True)]
    if target.fused_one_scheme:
        for members in _fused_sets(facts):
            if len({_scheme_key(configs[i]) for i in members}) > 1:
                cheapest = min((configs[i] for i in members), key=lambda c: module_cost(c, facts.linears[members[0]]))
                for i in members:
                    configs[i] = cheapest
    return Layout(tuple(configs), layout.compute_dtype)


def target_choices(choices: GeneChoices, target_name: str) -> GeneChoices:
    """Returns the gene choices narrowed to what the target's schemes allow (keeping what repair falls back on);
    `servable_layout` settles the rest (couplings such as W8A8's activations, fused sets)."""
    target = target_of(target_name)
    if target is None:
        return choices
    open_methods = [m for m in METHODS.values() if target.name in m.deploy_targets and m.format != INT_GRID]
    quantized = [scheme for scheme in target.schemes if scheme.weight_bits != 16]
    bits = {s.weight_bits for s in quantized if s.weight_bits} | {b for m in open_methods for b in m.bits if any(s.weight_bits is None for s in quantized)}
    formats = {f for s in quantized for f in (s.weight_formats or ())} | {m.format for m in open_methods}
    roundings = {m.rounding for m in METHODS.values() if target.name in m.deploy_targets}
    activations = [a for s in target.schemes for a in (s.activation if isinstance(s.activation, tuple) else (s.activation,))]
    symmetric = (True,) if all(s.symmetric is True for s in quantized) else choices.symmetric
    return replace(
        choices,
        bits=tuple(b for b in choices.bits if b in bits | {16}),
        symmetric=tuple(v for v in choices.symmetric if v in symmetric),
        formats=tuple(dict.fromkeys(f for f in (*choices.formats, *(m.format for m in open_methods)) if f in formats | {INT_GRID})),
        roundings=tuple(r for r in choices.roundings if r in roundings | {DEFAULT_ROUNDING}),
        outlier_methods=("none",),
        activation_bits=tuple(b for b in choices.activation_bits if b in {a.bits for a in activations} | {16}),
        activation_formats=tuple(f for f in choices.activation_formats if f in {a.format for a in activations}),
        granularities=tuple(g for g in choices.granularities if g in {a.granularity for a in activations}),
    )


def servable_document(document: dict, space: SearchSpace, target_name: str, rng: np.random.Generator) -> dict:
    """Returns the document when the target serves it, else its layout made servable (`servable_layout`), repaired
    into the budget if that made it dearer and made servable again (repair only lowers bits), notes saying so."""
    layout = layout_of(document, space.facts)
    servable = servable_layout(layout, space.facts, target_name)
    if servable == layout:
        return document
    if layout_bits(servable, space.facts) > space.bits_budget:
        servable = servable_layout(repair_layout(servable, space, rng), space.facts, target_name)
    notes = f"{document.get('notes', '')} (made servable on {target_name})".strip()[:500]
    prefix = str(document.get("name", "")).rpartition("-")[0] or "servable"
    return document_of(servable, space.facts, prefix[:60], notes)
