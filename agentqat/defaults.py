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

DEPLOY = "any"  # the engine a search's strategies must run on: any (fake quantization), or a target of agentqat.strategy.deploy
DEPLOY_TARGETS = ("any", "vllm-cpu", "vllm-cuda", "gguf")

# Block-wise QAT (agentqat polish, EfficientQAT's Block-AP): sized so that SmolLM2-135M polishes on 2 cores in tens
# of minutes. EfficientQAT trains 4096 windows of 2048 tokens for 2 epochs; these are far fewer.
POLISH_WINDOWS = 32  # calibration windows (of the arena's window length) each block is trained on
POLISH_EPOCHS = 4  # epochs per block (per bit width with the curriculum): 128 steps of one window
POLISH_BATCH = 1  # windows per optimizer step: with so few windows, more steps
# Learning rates far above EfficientQAT's (2e-5 on weights, 1e-4 on scales, over thousands of steps): on SmolLM2's
# block 10 (GPTQ w3g64, 128 steps) 1e-3 / 3e-3 cut the block's MSE by 10% where 5e-4 / 1e-3 cut 0.6% (w2: 7.7%, 3.7%).
POLISH_WEIGHT_LR = 1e-3  # AdamW on the latent weights
POLISH_SCALE_LR = 3e-3  # AdamW on log2 scales: about 0.2% of a scale per step
POLISH_ZERO_LR = 1e-3  # AdamW on zero points, in codes
POLISH_EXPONENT_LR = 1e-2  # AdamW on pow2 exponents: a step of 0.5 flips a rounded exponent
POLISH_CONVERGED = 0.01  # curriculum: move to fewer bits once an epoch improves the loss by less than this share
POLISH_ABLATE_BITS = (3, 2)

# Sensitivity map (agentqat sensitivity): the KL probes' bit widths and the Fisher estimate's windows.
SENSITIVITY_BITS = (2, 3, 4, 8)
FISHER_WINDOWS = 4

# The plan before a run (agentqat plan) and workers on GPUs (issue 25).
PLAN_MATCHES = 1000  # matches of the search the plan times, counted as `evolve --budget` counts them
GPUS_PER_WORKER = 0.0  # GPUs (whole or a fraction) each Ray evaluator actor asks for; 0: CPU actors
DEVICE_PATTERN = r"^(cpu|auto|cuda(:\d+)?)$"  # the device settings agentqat.device reads
DEVICE = "cpu"  # where a worker computes: cpu, cuda, cuda:N or auto (agentqat.device; cuda when there is one, else cpu)
SEQUENTIAL = False  # run the model layer by layer (agentqat.layerwise), for models bigger than the device

# GPTQ's own settings (agentqat.quant.gptq.GptqSettings, the registered method's `settings`): damping as a share of
# the mean Hessian diagonal, act-order with static groups (natural order loses to RTN on SmolLM2), lazy block width.
GPTQ_DAMP = 0.01
GPTQ_ACT_ORDER = True
GPTQ_BLOCK_SIZE = 128
