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

# Evolution (agentqat evolve): sized so that a run on the default arena takes minutes on 2 cores.
GENERATOR = "random"
POPULATION = 8  # survivors kept, and proposals evaluated per generation
GENERATIONS = 6
PATIENCE = 3  # generations without a better score before the run stops

# Comparisons (agentqat compare): every arm runs at every seed with the same budget.
COMPARE_ARMS = "llm,llm-random-edits,random,evo,knapsack"
COMPARE_SEEDS = "0-4"
COMPARE_MATCHES = 60
COMPARE_GENERATIONS = 50  # the budget, not the generation count, ends a comparison's runs
EVOLVE_WORKERS = 2  # Ray evaluator actors

# The LLM generator's vLLM server (agentqat llm serve) and its clients.
LLM_PORT = 8000
LLM_THREADS = 1  # vLLM worker threads; on 2 cores the other one is left to the arena
LLM_KV_CACHE_GIB = 1  # VLLM_CPU_KVCACHE_SPACE
LLM_MAX_MODEL_LEN = 2048
LLM_START_TIMEOUT_S = 300.0  # ~1 min on 2 cores with --enforce-eager
LLM_REQUEST_TIMEOUT_S = 120.0
LLM_RETRIES = 3  # retries of a request after a connection error, timeout or 5xx
LLM_BACKOFF_S = 1.0  # first retry's wait, doubled on each retry
LLM_TEMPERATURE = 1.0
LLM_CONCURRENCY = 8  # proposal requests in flight at once; the vLLM server decodes them as one batch

CACHE_ENV = "AGENTQAT_CACHE_DIR"


def cache_dir() -> Path:
    """Returns the cache directory: $AGENTQAT_CACHE_DIR, else ~/.cache/agentqat."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "agentqat")

# Re-evaluation of final winners on unseen text (agentqat.study): windows of the arena's length, at most this many.
TEST_WINDOWS = 16
TEST_TOP = 1  # winners per run re-evaluated: the top survivors of each run's last stage

DEPLOY = "any"  # the engine a search's strategies must run on: any (fake quantization), or a target of agentqat.deploy
DEPLOY_TARGETS = ("any", "vllm-cpu", "vllm-cuda", "gguf")
