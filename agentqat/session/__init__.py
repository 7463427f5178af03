"""The session layer between the command line (or a benchmark, or a test) and the library: run manifests,
the shared resources (evaluator pool, vLLM server) as context managers, and the jobs that use them.

    resources.py   Resources (pool + server), evaluator_pool, vllm_server: closed on any exit
    evolve.py      run_evolve, evolve_manifest, extend_run, extension, finished_summary
    baseline.py    run_baseline, quantize_arena, quantize_one, check_servable
"""

from agentqat.session.baseline import BaselineOutcome, check_servable, quantize_arena, quantize_one, run_baseline
from agentqat.session.evolve import EvolveObserver, evolve_manifest, extend_run, extension, finished_summary, run_evolve
from agentqat.session.resources import Resources, default_workers

__all__ = [
    "BaselineOutcome", "EvolveObserver", "check_servable", "Resources", "default_workers",
    "evolve_manifest", "extend_run", "extension", "finished_summary", "quantize_arena", "quantize_one",
    "run_baseline", "run_evolve",
]  # fmt: skip
