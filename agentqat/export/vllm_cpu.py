"""The `vllm-cpu` deploy target of the compressed-tensors format: the schemes vLLM's CPU kernels run.

    W4A16   int4 weights, symmetric (the CPU kernel raises on zero points), groups of an even size or one scale
            per output channel, input and output widths multiples of 32 (CPUWNA16LinearKernel)
    W8A8    int8 weights per output channel, symmetric, with int8 activations quantized dynamically per token
            (CPUInt8ScaledMMLinearKernel, oneDNN)
    16-bit  unquantized

There is no int8 weight-only, no fp8 and no other width on CPU (FACTS.md, vllm `kernels/mixed_precision/cpu.py`).
"""

from __future__ import annotations

from agentqat.export.base import ExportError, ExportSource, register_deploy_check
from agentqat.export.compressed_tensors import FORMAT, Scheme, plan

TARGET = "vllm-cpu"
WIDTH_MULTIPLE = 32


def scheme_problem(scheme: Scheme, out_features: int, in_features: int) -> str | None:
    """Returns why vLLM on CPU cannot run a scheme on a module of this shape, None when it can."""
    if scheme.activation is None:
        if scheme.bits != 4:
            return f"its weight-only kernel is 4-bit; {scheme.bits}-bit weights need int8 activations (W8A8) or 4 bits"
        if not scheme.symmetric:
            return "its int4 kernel takes no zero points; set symmetric true"
        if scheme.group_size % 2:
            return f"its int4 kernel takes even group sizes, not {scheme.group_size}"
        if in_features % WIDTH_MULTIPLE or out_features % WIDTH_MULTIPLE:
            return f"its int4 kernel takes widths that are multiples of {WIDTH_MULTIPLE}"
        return None
    if scheme.bits != 8 or scheme.group_size or not scheme.symmetric or scheme.activation != ("int", "per_token"):
        return "its W8A8 kernel takes symmetric int8 weights per output channel (group_size 0) with int8 per-token activations"
    return None


@register_deploy_check(FORMAT, TARGET)
def check_vllm_cpu(source: ExportSource) -> None:
    """Returns None when vLLM on CPU runs every module's scheme; ExportError naming the modules otherwise."""
    schemes, _ = plan(source)
    problems: dict[str, list[str]] = {}
    for name, scheme in schemes.items():
        if scheme is not None:
            rows, columns = source.modules[name].original.shape
            problem = scheme_problem(scheme, rows, columns)
            if problem:
                problems.setdefault(problem, []).append(name)
    if problems:
        modules = [name for names in problems.values() for name in names]
        reason = "; ".join(f"vLLM on CPU: {reason} ({len(names)}, e.g. {names[0]})" for reason, names in problems.items())
        raise ExportError(FORMAT, reason, modules, "use W4A16 (4-bit symmetric groups) or W8A8 (8-bit per channel, activation bits 8)")
