"""The commands that work through llama.cpp's own tools: `engines` (which engines this machine has, where, which
version) and `engine-eval` (a GGUF file, or a stock llama-quantize recipe, measured by llama-perplexity against
the base model). Bad input raises UserError."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_engines(args: argparse.Namespace) -> int:
    """Lists the engines found on this machine (llama.cpp's pinned tools, vLLM), their versions and paths, and how
    to get a missing one; `--build` builds the pinned llama.cpp first (once, about 8 minutes on 2 cores)."""
    from agentqat import ui
    from agentqat.engines import engines_found
    from agentqat.engines.llama_cpp import build_llama_cpp

    if args.build:
        build_llama_cpp(ui.PhaseView())
    found = engines_found()
    if args.json:
        print(json.dumps([engine.as_dict() for engine in found], indent=2))
    else:
        ui.print_engines(found)
    return 0


def cmd_engine_eval(args: argparse.Namespace) -> int:
    """Measures a GGUF file with llama.cpp itself: mean KL to the base model, same-top-token rate and perplexity
    from `llama-perplexity --kl-divergence` on a split of the corpus or a text file, with the file's bytes and bits
    per weight. `--stock TYPE` first makes llama.cpp's stock recipe of the model with the project's own
    llama-quantize (`--imatrix`: with an importance matrix from the calibration split). Builds llama.cpp, converts
    the base model to GGUF and computes its logits on first use (phases)."""
    from agentqat import ui
    from agentqat.engines.measure import EngineWorkspace
    from agentqat.errors import UserError

    if (args.file is None) == (args.stock is None):
        raise UserError("name one GGUF file or --stock TYPE", "agentqat engine-eval FILE.gguf, or --stock IQ4_NL [--imatrix]")
    if args.imatrix and args.stock is None:
        raise UserError("--imatrix goes with --stock (a file of yours was quantized as it was)", "drop --imatrix or add --stock TYPE")
    if args.chunks < 1:
        raise UserError(f"--chunks {args.chunks}: at least 1 chunk", "pass --chunks 16")
    workspace = EngineWorkspace(args.model, args.corpus, ui.PhaseView())
    model_file = workspace.stock(args.stock, args.imatrix) if args.stock else Path(args.file)
    figures = workspace.measure(model_file, args.text, args.chunks, args.context)
    report = figures.as_dict() | ({"stock": args.stock.upper(), "imatrix": args.imatrix} if args.stock else {})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ui.print_engine_eval(report)
    return 0
