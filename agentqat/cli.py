"""The `agentqat` command line: parses arguments, calls the library, hands results to `ui` to print.

Bad input raises UserError, printed as one line on stderr with exit code 2; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from agentqat import defaults
from agentqat.errors import UserError


def _quiet_libraries() -> None:
    """Silences the progress bars and notices that libraries print on every model load."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; it has a fallback.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(defaults.TORCH_THREADS)


def cmd_info(args: argparse.Namespace) -> int:
    """Prints the model's and corpus's facts and the base model's perplexity on the evaluation split."""
    from agentqat import ui
    from agentqat.data import SPLITS, load_corpus, sample_windows, tokenize
    from agentqat.models import load_model
    from agentqat.quality import perplexity

    corpus = load_corpus(args.corpus)
    loaded = load_model(args.model)
    split_tokens = {split: len(tokenize(loaded.tokenizer, corpus.split(split))) for split in SPLITS}
    eval_ids = tokenize(loaded.tokenizer, corpus.evaluation)
    windows = sample_windows(eval_ids, args.window_tokens, args.windows, args.seed)
    started = time.perf_counter()
    base_ppl = perplexity(loaded.model, windows)
    report = {
        "model": ui.facts_dict(loaded.facts, loaded.directory),
        "corpus": {"name": corpus.name, "source": corpus.source, "tokens": split_tokens},
        "base_perplexity": {
            "value": base_ppl,
            "split": "evaluation",
            "windows": args.windows,
            "window_tokens": args.window_tokens,
            "seed": args.seed,
            "seconds": time.perf_counter() - started,
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ui.print_info(report, loaded.facts)
    return 0


def _add_model_corpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=defaults.DEFAULT_MODEL, help="built-in name, HF directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--corpus", default=defaults.DEFAULT_CORPUS, help="packaged corpus, text file or hf:DATASET[:CONFIG] (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(prog="agentqat", description="Discover LLM quantization strategies in a survival tournament.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="model and corpus facts, base perplexity", description=cmd_info.__doc__)
    _add_model_corpus(info)
    info.add_argument("--windows", type=int, default=defaults.EVAL_WINDOWS, help="evaluation windows (default: %(default)s)")
    info.add_argument("--window-tokens", type=int, default=defaults.WINDOW_TOKENS, help="tokens per window (default: %(default)s)")
    info.add_argument("--seed", type=int, default=defaults.SEED, help="seed choosing the windows (default: %(default)s)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _quiet_libraries()
        return handler(args)
    except UserError as error:
        print(f"agentqat {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentqat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
