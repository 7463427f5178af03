"""The one place where agentqat's defaults live. Functions and the CLI read them from here."""

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CORPUS = "lee-news"
WINDOW_TOKENS = 512  # tokens per evaluation/calibration window
EVAL_WINDOWS = 8  # windows the `info` perplexity and quick checks use
CALIBRATION_WINDOWS = 32
SEED = 0
TORCH_THREADS = 2  # the machines this is designed for have 2 cores

CACHE_ENV = "AGENTQAT_CACHE_DIR"


def cache_dir() -> Path:
    """Returns the cache directory: $AGENTQAT_CACHE_DIR, else ~/.cache/agentqat."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "agentqat")
