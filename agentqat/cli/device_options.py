"""The device options of the commands that load a model: --device and --sequential, and an arena moved to them."""

from __future__ import annotations

import argparse

from agentqat import defaults
from agentqat.errors import UserError


def add_device(parser: argparse.ArgumentParser) -> None:
    """Adds --device and --sequential to a command's parser."""
    parser.add_argument("--device", default=None, help=f"where the model computes: cpu, cuda, cuda:N or auto (cuda when there is one) (default: the arena's, "
                        f"else {defaults.DEVICE})")  # fmt: skip
    parser.add_argument("--sequential", action="store_true", help="run the model layer by layer, each decoder block moved to the device in turn "
                        "(models bigger than the device; KL and perplexity only)")  # fmt: skip


def on_device(arena, args: argparse.Namespace):
    """Returns `arena` with the command's --device and --sequential (the arena itself without them); UserError (one
    line naming --device and the fix) when the device is not on this machine."""
    from pydantic import ValidationError

    from agentqat.arena.config import Arena
    from agentqat.device import parse_device

    update = {}
    if args.device is not None:
        parse_device(args.device)
        update["device"] = args.device
    if args.sequential:
        update["sequential"] = True
    if not update:
        return arena
    try:
        return Arena.model_validate({**arena.model_dump(), **update})
    except ValidationError as error:
        raise UserError(f"arena {arena.name} with {' '.join(f'--{k} {v}' for k, v in update.items())}: {error.errors()[0]['msg']}",
                        "drop --sequential, or use an arena without cloze and qa stages") from None  # fmt: skip


def load_placed(args: argparse.Namespace):
    """Returns the model --model names, loaded and placed as --device and --sequential say, and its placement."""
    from agentqat.device import place_model, placement
    from agentqat.models import load_model

    where = placement(args.device or defaults.DEVICE, args.sequential)
    loaded = load_model(args.model, where.dtype)
    place_model(loaded.model, where)
    return loaded, where
