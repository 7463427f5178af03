"""The `compressed-tensors` format: integer codes packed by the compressed-tensors library, which vLLM loads.

Each quantized module's grid (scale, zero point per group) is recomputed from the base weight exactly as RTN and
GPTQ (static groups) computed it; compressed-tensors then packs codes = round(quantized / scale + zero). A module
is exported only when scale * (codes - zero) gives back the arena's values bit for bit, and after packing the
library's own decompression is checked against them again. FP8 E4M3 weights (per output channel, the scales vLLM's
fp8 kernels take) are stored the same way as float8 values with their scales (`float-quantized`).
Scales are stored as float16 (the arena's fp16 scales are float16 numbers; power-of-two scales are too), other
tensors as bfloat16.

One config group per distinct scheme (weight bits, group size, symmetry; dynamic 8-bit activations), targets as
`re:` patterns over layer indices; 16-bit modules and the output head are in `ignore`. The library names the
checkpoint `pack-quantized` (weight-only int), `int-quantized` (int8 weights with int8 activations) or
`mixed-precision` where modules differ. vLLM fuses q/k/v and gate/up, whose shards must share one scheme.

What the format cannot hold is an ExportError naming the modules: fp16 outliers, SmoothQuant divisors (per
module, so not foldable into the norm the modules share), nf4, fp4 and llm_int8, fp8 in groups or with int8
activations, and values that are not an integer grid of the base weight (AWQ's scaled columns, HQQ's float zeros).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from agentqat.export.base import ExportError, ExportModule, ExportSource, register_exporter
from agentqat.quant.base import INT_GRID
from agentqat.quant.fp8 import fp8_round, fp8_scale
from agentqat.quant.grid import int_grid, to_groups
from agentqat.quant.schemes import outlier_scheme, transforms_of

FORMAT = "compressed-tensors"
FP8 = "fp8_e4m3"
FUSED_SETS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # vLLM's qkv_proj and gate_up_proj
ACTIVATION_BITS = 8  # dynamic activation quantization the format's engines run
_LAYER_NAME = re.compile(r"^(?P<prefix>.*)\.layers\.(?P<layer>\d+)\.(?P<role>.+)$")


@dataclass(frozen=True)
class Scheme:
    """One module's scheme: weight bits, group size (0: per output channel), symmetry, activation quantization,
    and the weight type ("int" codes or "float" fp8 values)."""

    bits: int
    group_size: int
    symmetric: bool
    activation: tuple[str, str] | None  # (format, granularity) of dynamic 8-bit activations, None for 16-bit
    type: str = "int"

    def quantization_scheme(self, targets: list[str]):
        """Returns the compressed-tensors QuantizationScheme for `targets`."""
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        weights = QuantizationArgs(
            num_bits=self.bits, type=self.type, symmetric=self.symmetric,
            strategy="group" if self.group_size else "channel", group_size=self.group_size or None,
        )  # fmt: skip
        activations = None
        if self.activation is not None:
            kind, granularity = self.activation
            activations = QuantizationArgs(
                num_bits=ACTIVATION_BITS, type="float" if kind == "fp8_e4m3" else "int", symmetric=True,
                strategy="token" if granularity == "per_token" else "tensor", dynamic=True,
            )  # fmt: skip
        return QuantizationScheme(targets=targets, weights=weights, input_activations=activations)


@dataclass(frozen=True)
class StoredGrid:
    """A module's float16 scales and integer zero points [out, groups], zero points in the format's signed code
    range (asymmetric grids shifted by 2^(bits-1)), None for fp8; compressed-tensors rounds the weight onto them."""

    scale: torch.Tensor
    zero: torch.Tensor | None


def scheme_problem(module: ExportModule) -> str | None:
    """Returns why the format cannot hold the module's config (None when it can; values are checked later)."""
    config = module.config
    if not (outliers := outlier_scheme(config.outliers)).carried_by(FORMAT):
        return f"they keep {outliers.kept} beside the codes ({outliers.name}), which the format has no place for"
    for transform in transforms_of(config.activation):
        if not transform.carried_by(FORMAT):
            return f"their {transform.label} divisors differ per module and cannot be folded into the norm the modules share"
    if config.activation.bits not in (16, ACTIVATION_BITS):
        return f"engines quantize activations dynamically to {ACTIVATION_BITS} bits, not {config.activation.bits}"
    if config.weight.bits == 16:
        return "their weights are 16-bit but their activations quantized" if config.activation.bits != 16 else None
    if config.weight.format == FP8:
        if config.weight.group_size:
            return "their fp8 weights have groups, and vLLM's fp8 kernels take one scale per output channel; set group_size 0"
        if config.activation.bits != 16 and config.activation.format != FP8:
            return "their fp8 weights come with int8 activations, which no fp8 kernel takes; quantize activations to fp8_e4m3 or not at all"
        return None
    if config.weight.format != INT_GRID:
        return f"format {config.weight.format} is not an integer grid"
    return None


def scheme_of(module: ExportModule) -> Scheme | None:
    """Returns the module's scheme (None for a 16-bit module), for a module `scheme_problem` accepts."""
    weight, activation = module.config.weight, module.config.activation
    if weight.bits == 16:
        return None
    quantized_input = None if activation.bits == 16 else (activation.format, activation.granularity)
    if weight.format == FP8:
        return Scheme(weight.bits, 0, True, quantized_input, type="float")
    return Scheme(weight.bits, weight.group_size, weight.symmetric, quantized_input)


def recover_grid(module: ExportModule) -> StoredGrid | None:
    """Returns the integer grid of the module's base weight groups, None when the arena's values are not exactly
    scale * (code - zero) on it with integer codes in range and float16 scales."""
    config = module.config.weight
    if config.format == FP8:
        return _recover_fp8(module)
    grid = int_grid(to_groups(module.original, config.group_size), config)
    if module.grid is not None:  # trained (agentqat polish): its own scales and zero points, on the same code range
        grid = grid._replace(scale=module.grid[0].to(torch.float32), zero=module.grid[1].to(torch.float32))
    target = to_groups(module.quantized, config.group_size)
    codes = torch.clamp(torch.round(target / grid.scale + grid.zero), grid.qmin, grid.qmax)
    if not torch.equal(grid.scale * (codes - grid.zero), target):
        return None
    scale16 = grid.scale.to(torch.float16)
    if not torch.equal(scale16.to(torch.float32), grid.scale):
        return None
    shift = 0 if config.symmetric else 2 ** (config.bits - 1)
    rows = module.original.shape[0]
    return StoredGrid(scale=scale16.reshape(rows, -1), zero=(grid.zero - shift).reshape(rows, -1).to(torch.int8))


def _recover_fp8(module: ExportModule) -> StoredGrid | None:
    """Returns the per-channel float16 scales of an fp8 module, None when scale * e4m3(weight / scale) on them
    is not exactly the arena's values."""
    config = module.config.weight
    groups = to_groups(module.original, config.group_size)
    scale = fp8_scale(groups, config)
    scale16 = scale.to(torch.float16)
    if not torch.equal(scale16.to(torch.float32), scale) or not torch.equal(fp8_round(groups, scale), to_groups(module.quantized, config.group_size)):
        return None
    return StoredGrid(scale=scale16.reshape(module.original.shape[0], -1), zero=None)


def _raise_problems(problems: dict[str, list[str]], fix: str) -> None:
    if problems:
        modules = [name for names in problems.values() for name in names]
        reason = "; ".join(f"{reason} ({len(names)}, e.g. {names[0]})" for reason, names in problems.items())
        raise ExportError(FORMAT, reason, modules, fix)


def _fused_set(name: str) -> tuple[str, int] | None:
    """Returns (parent module, set index) of a module vLLM fuses with its siblings, None for one it does not."""
    parent, _, last = name.rpartition(".")
    return next(((parent, i) for i, fused in enumerate(FUSED_SETS) if last in fused), None)


def plan(source: ExportSource) -> tuple[dict[str, Scheme | None], dict[str, StoredGrid]]:
    """Returns every module's scheme (None: stays 16-bit) and the grids of the quantized ones; ExportError naming
    the modules the format cannot hold, the fused sets whose shards differ, and the off-grid modules."""
    problems: dict[str, list[str]] = {}
    for module in source.modules.values():
        problem = scheme_problem(module)
        if problem:
            problems.setdefault(problem, []).append(module.name)
    _raise_problems(problems, "change those modules' genes, or export with --format fake-quant")
    schemes = {name: scheme_of(module) for name, module in source.modules.items()}
    fused: dict[tuple[str, int], list[str]] = {}
    for name in schemes:
        if (key := _fused_set(name)) is not None:
            fused.setdefault(key, []).append(name)
    for names in fused.values():
        if len({schemes[n] for n in names}) > 1:
            problems.setdefault("vLLM fuses q/k/v and gate/up into one layer, and their schemes differ", []).extend(names)
    _raise_problems(problems, "give q_proj, k_proj, v_proj (and gate_proj, up_proj) of each layer the same genes")
    grids = {}
    for name, scheme in schemes.items():
        if scheme is not None:
            recovered = recover_grid(source.modules[name])
            if recovered is None:
                rounding = source.modules[name].config.weight.rounding
                reason = f"their {rounding} values are not scale x integer codes of the base weight's groups"
                problems.setdefault(reason, []).append(name)
            else:
                grids[name] = recovered
    _raise_problems(problems, "use rounding rtn or gptq on format int, or export with --format fake-quant")
    return schemes, grids


def _targets(names: list[str]) -> list[str]:
    """Returns `re:` patterns matching exactly `names`: one per module role, over its layer indices."""
    layers: dict[tuple[str, str], list[str]] = {}
    for name in names:
        parts = _LAYER_NAME.match(name)
        layers.setdefault((parts["prefix"], parts["role"]), []).append(parts["layer"])
    return [
        f"re:^{re.escape(prefix)}\\.layers\\.(?:{'|'.join(indices)})\\.{re.escape(role)}$"
        for (prefix, role), indices in sorted(layers.items())
    ]


def quantization_config(schemes: dict[str, Scheme | None]):
    """Returns the compressed-tensors QuantizationConfig: one config group per scheme, 16-bit modules ignored."""
    from compressed_tensors.quantization import QuantizationConfig

    by_scheme: dict[Scheme, list[str]] = {}
    for name, scheme in schemes.items():
        if scheme is not None:
            by_scheme.setdefault(scheme, []).append(name)
    groups = {f"group_{i}": scheme.quantization_scheme(_targets(names)) for i, (scheme, names) in enumerate(by_scheme.items())}
    ignore = ["lm_head", *(name for name, scheme in schemes.items() if scheme is None)]
    return QuantizationConfig(config_groups=groups, ignore=ignore)


def decompressed_weight(module: torch.nn.Module) -> torch.Tensor:
    """Returns a compressed module's weight as compressed-tensors' own decompression gives it, with the stored
    float16 scales taken in float32 (so the product scale * (code - zero) is exact)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.utils import get_direct_state_dict

    scheme = module.quantization_scheme
    state = dict(get_direct_state_dict(module))
    state["weight_scale"] = state["weight_scale"].to(torch.float32)
    compressor = BaseCompressor.get_value_from_registry(scheme.format.value)
    return compressor.decompress(state, scheme)["weight"]


@register_exporter(FORMAT)
def export_compressed_tensors(source: ExportSource, out: Path) -> None:
    """Writes the model with packed integer codes (float16 scales, bfloat16 elsewhere), config and tokenizer;
    checks that decompressing every module gives the arena's values exactly."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    schemes, grids = plan(source)
    model = AutoModelForCausalLM.from_pretrained(source.model_directory, dtype=torch.float32)
    apply_quantization_config(model, quantization_config(schemes))
    with torch.no_grad():
        for name, grid in grids.items():
            module = model.get_submodule(name)
            module.weight.copy_(source.modules[name].quantized)
            module.weight_scale = torch.nn.Parameter(grid.scale, requires_grad=False)
            if grid.zero is not None and hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(grid.zero)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    mismatched = [name for name in grids if not torch.equal(decompressed_weight(model.get_submodule(name)), source.modules[name].quantized)]
    if mismatched:
        raise ExportError(FORMAT, "compressed-tensors' decompression does not give back the arena's values", mismatched, "report this as a bug")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.is_floating_point() and parameter.dtype != torch.float8_e4m3fn and not name.endswith("weight_scale"):
                parameter.data = parameter.data.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(source.model_directory).save_pretrained(out)
