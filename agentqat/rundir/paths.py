"""The run directory's layout: every file and folder name a run, a comparison or a polish keeps, defined here once.
Writers and readers (the journal, the sessions, the report, the studies) take the names from this module.

A run (`agentqat evolve`, `agentqat baseline`):

    runs/<name>/manifest.json       what the run is: job, arena, settings, seeds, versions (agentqat.rundir.manifest)
    runs/<name>/strategies.jsonl    every proposal as it is made (evolve runs)
    runs/<name>/results.jsonl       every match result, failures included (agentqat.arena.recorded)
    runs/<name>/generations.jsonl   one summary per finished generation (evolve runs)
    runs/<name>/<stream>.jsonl      what the generator noted (the LLM generator's rejections and reflections)
    runs/<name>/summary.json        the final leaderboard and why the run stopped
    runs/<name>/sensitivities.json  the per-layer sensitivities the generators read, with their cost
    runs/<name>/preparation.json    what the generator's own preparation (e.g. the knapsack's unit costs) cost

A comparison (`agentqat compare DIR`, agentqat.session.compare):

    DIR/compare.json, DIR/PLAN.md, DIR/plan-registered.json, DIR/preparation.json, DIR/prior.json
    DIR/runs/<arm>-seed<k>/   DIR/baseline/   DIR/winners/<run>.json   DIR/test/   DIR/confirm/   DIR/figures/
    DIR/engine.jsonl          winners (and llama.cpp's stock file) measured by the engine (bench/gguf_winners.py)

A polish (`agentqat polish`, agentqat.session.polish): results.jsonl, heldout.jsonl, ablation.jsonl.
"""

# a run
MANIFEST_FILE = "manifest.json"
RESULTS_STREAM = "results"
STRATEGIES_STREAM = "strategies"
GENERATIONS_STREAM = "generations"
SUMMARY_FILE = "summary.json"
SENSITIVITIES_FILE = "sensitivities.json"
PREPARATION_FILE = "preparation.json"  # a run's or a comparison's preparation and what it cost

# a comparison
COMPARE_FILE = "compare.json"
PLAN_FILE = "PLAN.md"
REGISTERED_FILE = "plan-registered.json"
PRIOR_FILE = "prior.json"
RUNS_DIR = "runs"
BASELINE_DIR = "baseline"
WINNERS_DIR = "winners"
TEST_DIR = "test"
CONFIRM_DIR = "confirm"
FIGURES_DIR = "figures"
ENGINE_FILE = "engine.jsonl"

# a polish
RESULTS_FILE = f"{RESULTS_STREAM}.jsonl"
HELDOUT_FILE = "heldout.jsonl"
ABLATION_FILE = "ablation.jsonl"
