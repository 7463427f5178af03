"""`agentqat plan`: a worker's memory, the level database's size and the time of each step, before a run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from agentqat.errors import UserError


def host_memory() -> int | None:
    """Returns this machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    """Prints, without loading weights (the model is built on torch's meta device from its config, so --model may
    be a directory holding only a config.json), one worker's peak memory on the arena term by term, whole model and
    layer by layer; the level database's size on disk (float32 as stored today, and packed); and the time of the
    base references, calibration, the level database, one screening match and a search of --matches matches, from
    the rates bench/rates.py measured on this machine. On --device cuda the rates are this CPU's divided by an
    assumed GPU throughput, labelled as an assumption. With --gpu-memory it says whether a worker fits the GPU, or
    that the sequential (layer-by-layer) path is needed."""
    from agentqat.arena.config import load_arena
    from agentqat.plan import load_rates, load_shape, make_plan, parse_device, parse_memory, plan_document, render_plan

    device = parse_device(args.device)
    gpu_memory = None if args.gpu_memory is None else parse_memory(args.gpu_memory)
    if gpu_memory is not None and not device.is_cuda:
        raise UserError(f"--gpu-memory {args.gpu_memory} is a GPU's memory but --device is {device}", "add --device cuda (or cuda:N), or drop --gpu-memory")
    if args.matches < 1 or args.workers < 1:
        raise UserError(f"--matches {args.matches} and --workers {args.workers} must both be at least 1", "pass positive counts")
    arena = load_arena(args.arena)
    rates, _ = load_rates(Path(args.rates)) if args.rates else load_rates()
    shape = load_shape(args.model or arena.model)
    plan = make_plan(shape, arena, device, rates, args.matches, args.workers, gpu_memory, host_memory())
    print(json.dumps(plan_document(plan), indent=2) if args.json else render_plan(plan))
    return 0
