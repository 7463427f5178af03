"""The LLM generator: a local model proposes strategies under JSON-schema-constrained decoding.

Three kinds of request, each a prompt from the top-level `prompts/` and a schema (`edits`):

    propose    a whole strategy (the strategy schema narrowed: few rules, the model's module names, the choices)
    mutate     an edit document applied to a parent from the elite (set_bits, bit_shift, set_group_size, ...)
    recombine  a crossover of two elite parents: layerwise, blockwise, or spans of layers from each

With no survivor yet every request is a proposal; afterwards requests are mutate with P 0.5, recombine 0.3 (with
two or more survivors) and propose 0.2. The elite is the ELITE_SIZE best survivors. Each request's sampling seed
is drawn from the caller's rng, so the same seed, model and server give the same proposals.

Every reply is checked again, whatever the decoder enforced: JSON, jsonschema, the pydantic model, application
(edits and crossovers), `resolve_strategy` against the model, then the budget (a proposal over it is repaired,
and the notes say so). A failed check or a duplicate (by strategy id, against the population and the batch)
rejects the reply with its reason; reasons feed the reflection, and `take_records` hands the loop
"rejections" (one per reply) and "reflections" (after each `tell`, with the accepted/rejected/repaired counts).
At most ATTEMPTS_PER_PROPOSAL requests per proposal asked for: `propose` may return fewer than `count`.
Proposals are named "<generator name>-<strategy id>"; their notes say which request produced them.

Each prompt shows an example reply drawn at random from the request's schema (`prompts.example`, seeded by the
request's seed), so no example carries a known-good answer. Ablations (recorded in the run's manifest):
`reflect=False` leaves the lessons out of every prompt; no `sensitivities` shows "not measured". The counts
recorded after each `tell` add the seconds spent in the backend (`decode_s`) and what repair did to accepted
proposals: how many it changed (`repaired`), the modules it changed (`repaired_modules`) and the bits per weight
it took away (`repaired_bits`, summed over proposals).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import jsonschema
import numpy as np
import pydantic

from agentqat.generators.base import Evaluated, GeneratorRecord, ranked_parents, register_generator
from agentqat.generators.llm import edits, prompts, reflection
from agentqat.serving.backends import JsonBackend
from agentqat.strategy.document import SCHEMA_VERSION, StrategyError, parse_strategy, strategy_id
from agentqat.strategy.layout import layout_bits, layout_of
from agentqat.strategy.repair import repair, within
from agentqat.strategy.resolve import resolve_strategy
from agentqat.strategy.space import SearchSpace

ELITE_SIZE = 4
MAX_LESSONS = 5
KIND_WEIGHTS = {"propose": 0.2, "mutate": 0.5, "recombine": 0.3}
PARENTS = {"propose": 0, "mutate": 1, "recombine": 2}
MAX_TOKENS = {"propose": 400, "mutate": 160, "recombine": 100}
ATTEMPTS_PER_PROPOSAL = 3
MAX_REASON = 300
MAX_KEPT_REPLY = 2000
COUNTS = ("accepted", "rejected", "repaired", "repaired_modules", "repaired_bits", "decode_s")


@dataclass(frozen=True)
class Request:
    """One question to the LLM: its kind, the parents it shows, the sampling seed."""

    kind: str
    parents: tuple[dict, ...]
    seed: int


def elite(population: Sequence[Evaluated], size: int = ELITE_SIZE) -> list[Evaluated]:
    """Returns the `size` best parents: survivors by score then strategy id (while none survives, the lowest-KL
    collapses: `ranked_parents`)."""
    return ranked_parents(population)[:size]


def _reason(error: Exception) -> str:
    """Returns a one-line rejection reason for a failed check."""
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON (cut at the token limit?): {error.msg} at column {error.colno}"
    if isinstance(error, RecursionError):
        return "JSON nested deeper than the parser reads"
    if isinstance(error, jsonschema.ValidationError):
        return f"schema: {error.message} at {'/'.join(map(str, error.absolute_path)) or 'the top'}"
    if isinstance(error, StrategyError):
        return "; ".join(error.lines)
    if isinstance(error, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)


@dataclass(frozen=True)
class Repair:
    """What the budget repair did to one accepted proposal: modules changed and bits per weight taken away."""

    modules: int = 0
    bits: float = 0.0


@register_generator("llm")
class LlmGenerator:
    """Asks an LLM backend for strategies, edits and crossovers; checks every reply (see the module docstring)."""

    name = "llm"
    uses_sensitivities = True  # the session measures them once per arena and seed and passes them in

    def __init__(
        self,
        space: SearchSpace,
        backend: JsonBackend,
        sensitivities: Mapping[int, float] | None = None,
        reflect: bool = True,
    ):
        self.space = space
        self.backend = backend
        self.sensitivities = dict(sensitivities) if sensitivities else None
        self.reflect = reflect
        self.reflection = reflection.Reflection(space.facts)
        self.counts: dict[str, float] = dict.fromkeys(COUNTS, 0)
        self._unbounded = replace(space, bits_budget=math.inf)  # where a candidate is built without the repair
        self._model = prompts.describe_model(space.facts, edits.common_group_sizes(space))
        self._schemas = {
            "propose": edits.propose_schema(space),
            "mutate": edits.edit_schema(space),
            "recombine": edits.recombine_schema(),
        }
        self._validators = {kind: jsonschema.Draft202012Validator(s) for kind, s in self._schemas.items()}
        self._reasons: list[str] = []  # rejection reasons since the last `tell`
        self._records: list[GeneratorRecord] = []

    def context(self, best: Sequence[Evaluated]) -> prompts.Context:
        """Returns what every prompt carries, for this elite and the current reflections."""
        lessons = list(dict.fromkeys(self.reflection.short_term + self.reflection.long_term))[:MAX_LESSONS]
        lessons = lessons if self.reflect else []
        return prompts.Context(
            model=self._model,
            budget=self.space.bits_budget,
            sensitivities=prompts.describe_sensitivities(self.sensitivities, self.space.facts.num_layers),
            elite=tuple(best),
            lessons=tuple(lessons),
        )

    def _request(self, best: Sequence[Evaluated], rng: np.random.Generator) -> Request:
        """Returns the next request: its kind drawn by KIND_WEIGHTS among those the elite allows."""
        kinds = [kind for kind in prompts.KINDS if PARENTS[kind] <= len(best)]
        weights = np.array([KIND_WEIGHTS[kind] for kind in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        chosen = rng.choice(len(best), PARENTS[kind], replace=False) if PARENTS[kind] else []
        return Request(kind, tuple(best[int(i)].document for i in chosen), int(rng.integers(2**31)))

    def _built(self, request: Request, reply: str, space: SearchSpace) -> tuple[dict, bool]:
        """Returns the document a checked reply describes in `space` and whether it was repaired into the
        budget; raises on failure."""
        answer = json.loads(reply)
        rng = np.random.default_rng(request.seed)
        if request.kind == "mutate":
            document, repaired = edits.apply_edits(
                request.parents[0], edits.parse_reply(reply, edits.EditDocument), space, rng
            )
        elif request.kind == "recombine":
            document, repaired = edits.apply_recombination(
                *request.parents, edits.parse_reply(reply, edits.Recombination), space, rng
            )  # fmt: skip
        else:
            document, repaired = {"schema_version": SCHEMA_VERSION, **answer}, False
        resolve_strategy(parse_strategy(document), space.facts)  # raises StrategyError naming each problem
        if not within(document, space):
            document, repaired = repair(document, space, rng), True
        return document, repaired

    def _candidate(self, request: Request, reply: str) -> tuple[dict, Repair | None]:
        """Returns the document a reply describes and what the budget repair did (None: nothing); raises on failure."""
        self._validators[request.kind].validate(json.loads(reply))
        document, repaired = self._built(request, reply, self.space)
        if not repaired:
            return document, None
        facts = self.space.facts
        before, after = layout_of(self._built(request, reply, self._unbounded)[0], facts), layout_of(document, facts)
        changed = sum(old != new for old, new in zip(before.configs, after.configs, strict=True))
        return document, Repair(changed, layout_bits(before, facts) - layout_bits(after, facts))

    def _applies(self, request: Request, reply: str) -> bool:
        """Returns whether a reply passes every check for this request (an example worth showing)."""
        try:
            self._candidate(request, reply)
        except (ValueError, RecursionError, StrategyError, jsonschema.ValidationError):
            return False
        return True

    def _named(self, document: dict, request: Request, reply: str, repaired: Repair | None) -> dict:
        """Returns the document named "<generator name>-<strategy id>", its notes saying which request produced it."""
        parents = " x ".join(str(parent.get("name", "unnamed")) for parent in request.parents)
        notes = f"{self.name} {request.kind}" + (f" of {parents}" if parents else "")
        if repaired is not None:
            notes += f"; repaired into the budget ({repaired.modules} modules, -{repaired.bits:.3f} b/w)"
        notes += f"; reply {json.dumps(json.loads(reply), separators=(',', ':'))}" if request.kind != "propose" else ""
        body = {key: value for key, value in document.items() if key not in ("schema_version", "name", "notes")}
        name = f"{self.name}-{strategy_id(document)}"
        return {"schema_version": SCHEMA_VERSION, "name": name, "notes": notes[:500], **body}

    def _reject(self, request: Request, reply: str, reason: str) -> None:
        self.counts["rejected"] += 1
        reason = f"{request.kind}: {reason}"[:MAX_REASON]
        self._reasons.append(reason)
        parents = [parent.get("name", "unnamed") for parent in request.parents]
        data = {"kind": request.kind, "seed": request.seed, "parents": parents, "reason": reason,
                "reply": reply[:MAX_KEPT_REPLY]}  # fmt: skip
        self._records.append(GeneratorRecord("rejections", data))

    def _replies(self, requests: Sequence[Request], context: prompts.Context) -> list[str]:
        """Returns the backend's replies to `requests`, in order; up to `backend.concurrency` are in flight at
        once (a vLLM server batches them), and the wall time is added to `decode_s`."""
        prompts_ = []
        for request in requests:
            schema = self._schemas[request.kind]
            example = prompts.example(schema, request.seed, lambda text, request=request: self._applies(request, text))
            prompts_.append(prompts.render(request.kind, context, request.parents, example=example))
        started = time.perf_counter()
        if self.backend.concurrency <= 1 or len(requests) == 1:
            replies = [self._ask(request, prompt) for request, prompt in zip(requests, prompts_, strict=True)]
        else:
            with ThreadPoolExecutor(min(self.backend.concurrency, len(requests))) as pool:
                replies = list(pool.map(self._ask, requests, prompts_))
        self.counts["decode_s"] += time.perf_counter() - started
        return replies

    def _ask(self, request: Request, prompt: str) -> str:
        """Returns the backend's reply to one request's prompt."""
        return self.backend.generate(prompt, self._schemas[request.kind], request.seed, MAX_TOKENS[request.kind])

    def iter_proposals(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> Iterator[dict]:
        """Yields up to `count` new documents, each as soon as its batch of replies is checked. Requests go out
        in batches of at most the proposals still missing, so the requests drawn (and so the proposals) are the
        ones a one-at-a-time loop would draw."""
        seen = {strategy_id(member.document) for member in population}
        best = elite(population)
        context = self.context(best)
        accepted, attempts = 0, ATTEMPTS_PER_PROPOSAL * count
        while accepted < count and attempts > 0:
            requests = [self._request(best, rng) for _ in range(min(count - accepted, attempts))]
            attempts -= len(requests)
            for request, reply in zip(requests, self._replies(requests, context), strict=True):
                try:
                    document, repaired = self._candidate(request, reply)
                except (ValueError, RecursionError, StrategyError, jsonschema.ValidationError) as error:
                    self._reject(request, reply, _reason(error))
                    continue
                if strategy_id(document) in seen:
                    self._reject(request, reply, "duplicate of a strategy already proposed or evaluated")
                    continue
                seen.add(strategy_id(document))
                self.counts["accepted"] += 1
                if repaired is not None:
                    self.counts["repaired"] += 1
                    self.counts["repaired_modules"] += repaired.modules
                    self.counts["repaired_bits"] += repaired.bits
                accepted += 1
                yield self._named(document, request, reply, repaired)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns up to `count` new documents, distinct from each other and from the population."""
        return list(self.iter_proposals(population, count, rng))

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Turns the evaluated strategies and the replies rejected since the last call into reflections."""
        if self.reflect:
            self.reflection.observe(evaluated, self._reasons)
        self._reasons = []
        data = {"short_term": self.reflection.short_term, "long_term": self.reflection.long_term, **self.counts}
        self._records.append(GeneratorRecord("reflections", data))

    def take_records(self) -> list[GeneratorRecord]:
        """Returns the rejections and reflections noted since the last call."""
        records, self._records = self._records, []
        return records

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Takes back a replayed generation's rejection reasons (for its `tell`) and the counts after it."""
        for record in records:
            if record.stream == "rejections":
                self._reasons.append(record.data["reason"])
            elif record.stream == "reflections":
                self.counts.update({key: record.data[key] for key in COUNTS if key in record.data})
