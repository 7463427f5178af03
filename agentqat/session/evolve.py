"""Evolve runs: start one, resume one with its recorded settings, extend a finished one, or show it.

`run_evolve` is what the CLI, the benchmarks and the tests call; given open `Resources` it uses their pool
and server, so many runs (generators, seeds) can share one of each.

Every generator gets the same help, the same way: the manifest's shared prior (played as generation 0 by the
loop), and, for generators that use them (`uses_sensitivities`), the arena's per-layer sensitivities, measured
once per arena and kept in the cache directory (`agentqat.arena.probes.shared_sensitivities`); their cost is
preparation, written to the run's sensitivities.json and not charged to the run. What a generator measures of
its own before its search (`shared_preparation`, e.g. the knapsack's unit costs) is preparation too: measured once
per arena outside the run (kept in the cache directory), written with its cost to the run's preparation.json and
not charged to the run. Runs recorded before that (manifest `preparation` "in-run") resume as they were played:
the generator's `prepare` plays through the run's recorded player and the loop charges it to the run's budget.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.errors import UserError
from agentqat.evolution.loop import EvolveOutcome, EvolveSettings, Observer, evolve
from agentqat.generators.base import Cost
from agentqat.progress import Reporter
from agentqat.rundir.journal import EvolveJournal, read_results, read_summary
from agentqat.rundir.manifest import (
    LlmSettings,
    Manifest,
    check_windows,
    package_versions,
    read_manifest,
    windows_bos,
    write_manifest,
)
from agentqat.rundir.paths import PREPARATION_FILE, SENSITIVITIES_FILE, SUMMARY_FILE
from agentqat.rundir.store import RunStore, write_json_atomic
from agentqat.session.resources import Resources, default_workers

EXTENSIBLE = ("generations", "patience", "match_budget", "token_budget", "time_budget_s", "stop_when_clear")
MORE_GENERATIONS = 2  # what the extension hint proposes


class EvolveObserver(Reporter, Observer, Protocol):
    """What a live view hears from a run: phases, matches, generations, and the generator once it is made."""

    def match_started(self, worker: str, request) -> None: ...

    def match_finished(self, result) -> None: ...

    def generator_ready(self, generator, prior_matches: int) -> None: ...


def evolve_manifest(
    arena: Arena, llm: LlmSettings | None = None, prior: Sequence[dict] | None = None, reporter: Reporter | None = None,
    sensitivity: str = "probes", **settings: object,
) -> Manifest:
    """Returns the manifest of a new evolve run: `settings` are EvolveSettings fields (generator, seed,
    population, ...); `llm` the LLM generator's settings (defaults when the generator is llm and none given);
    `prior` the shared seed strategies (None: `uniform_prior` of the arena's search space; () for none);
    `sensitivity` the generators' sensitivities, "probes" or "map" (the arena's map, which must be measured)."""
    from agentqat.generators import GENERATORS
    from agentqat.generators.llm.prompts import VERSION as PROMPT_VERSION
    from agentqat.generators.prior import uniform_prior
    from agentqat.rundir.manifest import generator_settings
    from agentqat.strategy.document import SCHEMA_VERSION

    try:
        evolve_settings = EvolveSettings(**settings)
    except ValueError as error:
        raise UserError(str(error), "see the evolve settings") from None
    if evolve_settings.generator not in GENERATORS:
        raise UserError(f"unknown generator {evolve_settings.generator!r}", f"set generator to one of {', '.join(sorted(GENERATORS))}")
    if evolve_settings.generator == "llm":
        llm = llm or LlmSettings()
    if prior is None or arena.deploy != defaults.DEPLOY:
        space = search_space(arena, reporter)
        prior = uniform_prior(space) if prior is None else prior
        prior = _servable_prior(prior, space, arena)
    if sensitivity == "map":
        from agentqat.study.sensitivity_map import cached_map

        cached_map(arena)  # a run that asks for the map starts only once it is measured
    return Manifest(
        kind="evolve", arena=arena, settings=evolve_settings, llm=llm if evolve_settings.generator == "llm" else None,
        prior=tuple(prior), sensitivity=sensitivity, strategy_schema_version=SCHEMA_VERSION, versions=package_versions(),
        window_bos=windows_bos(arena), preparation="shared", generator_settings=generator_settings(evolve_settings.generator),
        prompt_template=PROMPT_VERSION if evolve_settings.generator.startswith("llm") else None,
    )  # fmt: skip


def _servable_prior(prior: Sequence[dict], space, arena: Arena) -> list[dict]:
    """Returns the prior's documents made servable on the arena's deployment target, twins dropped."""
    import numpy as np

    from agentqat.strategy.deploy import servable_document
    from agentqat.strategy.document import strategy_id

    if arena.deploy == defaults.DEPLOY:
        return list(prior)
    rng = np.random.default_rng(arena.seed)
    documents = (servable_document(document, space, arena.deploy, rng) for document in prior)
    return list({strategy_id(document): document for document in documents}.values())


def search_space(arena: Arena, reporter: Reporter | None = None):
    """Returns the arena's SearchSpace: its model's facts, budget, the genes its deploy target allows and its ladder
    (the levels that target serves); UserError when no strategy can fit."""
    from agentqat.levels import arena_ladder
    from agentqat.models import load_facts
    from agentqat.strategy import deploy
    from agentqat.strategy.space import GeneChoices, SearchSpace

    facts = load_facts(arena.model, reporter)
    ladder = arena_ladder(arena.levels, facts)
    target = deploy.target_of(arena.deploy)
    if target is not None and ladder:
        ladder = tuple(level for level in ladder if target.scheme_of(level) is not None)
        if not ladder:
            raise UserError(f"arena {arena.name}: no level of its ladder runs on {target.engine} ({target.describe()})",
                            "deploy to any (and export fake-quant), or use an arena whose ladder has servable levels")  # fmt: skip
    try:
        return SearchSpace(facts, arena.bits_budget, deploy.target_choices(GeneChoices(), arena.deploy), ladder)
    except ValueError as error:
        fix = f"raise bits_budget in the arena file{'' if target is None else ', or deploy to another target'}"
        raise UserError(f"arena {arena.name}{'' if target is None else f' deployed to {target.name}'}: {error}", fix) from None


def _llm_options(llm: LlmSettings, server) -> dict:
    """Returns the LLM generator's backend and ablation options. The backend is made (and an in-process one
    checked) first, so that an unreachable server ends the run before any probe."""
    from agentqat.serving.backends import check_constrained, make_backend

    if llm.managed_server and server is None:
        raise UserError("the run's LLM settings ask for a managed vLLM server", "open the shared resources with these llm settings")
    backend = make_backend(llm.backend, llm.model, llm.url, server)
    if llm.backend == "transformers":
        check_constrained(backend)  # a vLLM server is checked as it starts, or when Resources open for its URL
    return {"backend": backend, "reflect": llm.reflection}


def _record_once(path: Path, record: dict) -> None:
    """Writes a run's preparation record unless a first start already did: a resume reads the cache, and its
    record would say so instead of what the run's preparation was."""
    if not path.exists():
        write_json_atomic(path, record)


def _generator(manifest: Manifest, space, pool_run, player, directory: Path, server, reporter: Reporter | None = None):
    """Returns the run's generator and what making it cost the run (a `prepare` played through `player`)."""
    from agentqat.arena.probes import shared_sensitivities
    from agentqat.generators import GENERATORS, make_generator

    name, llm = manifest.settings.generator, manifest.llm
    factory = GENERATORS[name]
    options = _llm_options(llm, server) if llm is not None else {}
    if getattr(factory, "uses_sensitivities", False) and (llm is None or llm.sensitivities) and manifest.sensitivity == "map":
        from agentqat.study.sensitivity_map import cached_map, prior_values

        sensitivity_map = cached_map(manifest.arena)
        _record_once(directory / SENSITIVITIES_FILE, dataclasses.asdict(sensitivity_map))
        options["sensitivities"] = prior_values(sensitivity_map, manifest.arena.bits_budget)
    elif getattr(factory, "uses_sensitivities", False) and (llm is None or llm.sensitivities):
        measured = shared_sensitivities(pool_run, manifest.arena, space.facts, defaults.cache_dir(), reporter)
        _record_once(directory / SENSITIVITIES_FILE, dataclasses.asdict(measured))
        options["sensitivities"] = measured.values
    cost = Cost()
    if manifest.preparation == "shared" and hasattr(factory, "shared_preparation"):
        extra, spent = factory.shared_preparation(space, manifest.arena, pool_run, defaults.cache_dir(), reporter)
        _record_once(directory / PREPARATION_FILE, {"generator": name, "matches": spent.matches, "tokens": spent.tokens,
                                                    "charged": False, "note": "preparation: measured once per arena, outside the run"})  # fmt: skip
        options.update(extra)
    elif hasattr(factory, "prepare"):
        extra, cost = factory.prepare(space, manifest.arena, player, reporter)
        options.update(extra)
    generator = make_generator(name, space, **options)
    if llm is not None and llm.fallback:
        from agentqat.generators.fallback import WithFallback

        generator = WithFallback(generator, make_generator("random", space))
    from agentqat.generators.on_ladder import Mapped, on_ladder

    if space.ladder:
        generator = Mapped(generator, lambda document, rng: on_ladder(document, space, rng))  # every arm: one space
    if manifest.arena.deploy != defaults.DEPLOY:
        from agentqat.strategy.deploy import servable_document

        target = manifest.arena.deploy  # every proposal runs on the arena's engine
        generator = Mapped(generator, lambda document, rng: servable_document(document, space, target, rng))
    return generator, cost


def _open_store(directory: Path, manifest: Manifest | None) -> tuple[RunStore, Manifest]:
    """Returns the run's store and manifest: a new run when `manifest` is given, else the recorded one."""
    if manifest is not None:
        return RunStore.create(directory, manifest.model_dump(mode="json")), manifest
    store = RunStore.open(directory)
    recorded = read_manifest(directory)
    if recorded.kind != "evolve":
        raise UserError(f"{directory} is a {recorded.kind} run, not an evolve run", "resume it with its own command")
    return store, check_windows(directory, recorded)


def run_evolve(
    directory: Path,
    manifest: Manifest | None = None,
    *,
    resources: Resources | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    observer: EvolveObserver | None = None,
) -> EvolveOutcome:
    """Returns the outcome of the evolve run in `directory`: a new run of `manifest`, or (None) the recorded run
    resumed with its own settings. Uses the pool and server of `resources`, else opens (and closes) its own
    with `workers` evaluator actors (default: see `default_workers`) on the Ray cluster at `ray_address`."""
    from agentqat.arena.recorded import RecordedPlayer
    from agentqat.strategy.canonical import canonical_id

    if manifest is not None:  # a new run records the evaluator actors it starts with
        started_with = resources.workers if resources is not None else workers
        manifest = manifest.model_copy(update={"workers": default_workers(tuple(filter(None, [manifest.llm]))) if started_with is None else started_with})
    store, manifest = _open_store(Path(directory), manifest)
    journal = EvolveJournal(store)
    read_results(store)  # a damaged results stream is one clear line before anything starts
    space = search_space(manifest.arena, observer)
    own = resources or Resources(manifest.arena, workers, ray_address, manifest.llm, store.directory, observer)
    with own if resources is None else nullcontext(resources):
        player = RecordedPlayer(
            own.pool.run, store, on_result=observer and observer.match_finished, on_start=observer and observer.match_started
        )
        generator, cost = _generator(manifest, space, own.pool.run, player, store.directory, own.server_for(manifest.llm), observer)
        if observer:
            observer.generator_ready(generator, cost.matches)
        identity = functools.partial(canonical_id, facts=space.facts)
        return evolve(
            generator, manifest.arena, player, manifest.settings, journal, observer,
            prior_cost=cost, identity=identity, prior=manifest.prior,
        )  # fmt: skip


def finished_summary(directory: Path) -> dict | None:
    """Returns the summary of an evolve run that ended (summary.json), None when it has not ended."""
    return read_summary(Path(directory))


def extension(manifest: Manifest, summary: dict) -> dict[str, object]:
    """Returns the settings change that lets a finished run go on past the rule that stopped it (empty when
    the generator ran out of new proposals)."""
    settings = manifest.settings
    rule = summary.get("stop_rule", "generations")
    if rule == "match_budget":
        return {"match_budget": 2 * settings.match_budget}
    if rule == "token_budget":
        return {"token_budget": 2 * settings.token_budget}
    if rule == "time_budget_s":
        return {"time_budget_s": 2 * settings.time_budget_s}
    if rule == "patience":
        return {"patience": settings.patience + MORE_GENERATIONS, "generations": max(settings.generations, summary["generations"] + MORE_GENERATIONS)}
    if rule == "stop_when_clear":
        return {"stop_when_clear": False, "generations": max(settings.generations, summary["generations"] + MORE_GENERATIONS)}
    if rule == "generations":
        return {"generations": summary["generations"] + MORE_GENERATIONS}
    return {}


def extend_run(directory: Path, **changes: object) -> bool:
    """Returns whether the stopping rules of the evolve run changed: when they differ from the recorded ones,
    they are written to its manifest and its summary removed, so that the next resume plays on. Only
    EXTENSIBLE settings may change."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    unknown = set(changes) - set(EXTENSIBLE)
    if manifest.kind != "evolve" or unknown:
        raise UserError(f"cannot change {sorted(unknown) or 'the settings'} of the {manifest.kind} run {directory}", f"only {', '.join(EXTENSIBLE)} may change")
    try:
        settings = dataclasses.replace(manifest.settings, **changes)
    except ValueError as error:
        raise UserError(str(error), "see the evolve settings") from None
    if settings == manifest.settings:
        return False
    write_manifest(directory, manifest.model_copy(update={"settings": settings}))
    (directory / SUMMARY_FILE).unlink(missing_ok=True)
    return True
