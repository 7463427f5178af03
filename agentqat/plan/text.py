"""The plan as text: memory per worker by term, the level database on disk, and the time of each step."""

from __future__ import annotations

from agentqat.plan.memory import WorkerMemory
from agentqat.plan.plan import Plan

NAME_WIDTH = 44


def size(count: int | float) -> str:
    """Returns a byte count in binary units: 512.0 KiB, 3.2 MiB, 14.9 GiB, 1.2 TiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 2**10:,.1f} KiB"


def duration(seconds: float) -> str:
    """Returns seconds as 0.42 s, 12.3 min, 5.2 h or 3.1 days."""
    for unit, scale in (("days", 86400 * 2), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / (86400 if unit == 'days' else scale):,.1f} {unit}"
    return f"{seconds:.2f} s"


def _memory_lines(memory: WorkerMemory) -> list[str]:
    lines = [f"  {term.name:<{NAME_WIDTH - 2}}{size(term.bytes):>12}   {term.detail}" for term in memory.terms]
    return lines + [f"  {'total':<{NAME_WIDTH - 2}}{size(memory.total):>12}"]


def render_plan(plan: Plan) -> str:
    """Returns the plan as the lines `agentqat plan` prints."""
    lines = [
        f"plan: {plan.model} on arena {plan.arena}, device {plan.device} ({plan.compute_dtype} compute), no weights loaded",
        f"model: {plan.architecture}, {plan.parameters:,} parameters, {plan.layers} layers, {plan.linear_modules} linear "
        f"modules ({plan.linear_weights:,} weights)",
        "",
        "peak memory per worker, whole model on the device (estimated)",
        *_memory_lines(plan.memory),
        "peak memory per worker, layer by layer (the sequential path, --sequential)",
        *_memory_lines(plan.sequential),
    ]  # fmt: skip
    if plan.workers > 1 and plan.device == "cpu":
        lines.append(f"  {plan.workers} workers on one machine: {size(plan.workers * plan.memory.total)} whole model")
    if plan.fit is not None:
        lines.append(f"  {plan.fit.message}")
    elif plan.device != "cpu":
        lines.append("  pass --gpu-memory (e.g. 16GiB) to check that a worker fits the GPU")
    lines += ["", "level database on disk"]
    database = plan.database
    if database.declared:
        lines.append(f"  {'level':<{NAME_WIDTH - 2}}{'on disk':>12}{'as float32':>14}")
        lines += [f"  {level.name:<{NAME_WIDTH - 2}}{size(level.bytes):>12}{size(level.float32_bytes):>14}"
                  + ("" if level.packed else "   float32: no packed form for this format yet") for level in database.levels]  # fmt: skip
        lines.append(f"  {f'total, {len(database.levels)} levels':<{NAME_WIDTH - 2}}{size(database.bytes):>12}{size(database.float32_bytes):>14}")
    else:
        level = database.levels[0]
        stored = "packed (codes, scales, zeros)" if level.packed else "float32"
        lines.append(f"  none: the arena declares no [levels] ladder. One level ({level.name}) would take {size(level.bytes)} "
                     f"{stored}; {size(level.float32_bytes)} as float32")  # fmt: skip
    lines.append(f"  calibration statistics (float32 Hessians, cached once per calibration): {size(database.calibration_bytes)}")
    lines += ["", f"time on {plan.device} (rates {plan.rates})"]
    lines += [f"  {e.name:<{NAME_WIDTH - 2}}{duration(e.seconds):>12}   {e.detail}" for e in plan.estimates]
    return "\n".join(lines)
