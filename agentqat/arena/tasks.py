"""Task-based quality checks: last-word cloze on held-out text, short factual questions, degenerate generations.

- Cloze (LAMBADA-style): a context of held-out text ending right before the last word of a sentence; the
  model must predict every token of that word. All items are scored by teacher forcing in batched forward
  passes: an item is correct when the argmax at each target position is the target token.
- Questions: plain-completion prompts (no chat template: SmolLM2-135M-Instruct answered 42 of 99 prompts as
  completions and 1 of 99 through its chat template, where it restates the question first) answered by
  batched greedy decoding. A quantized model is scored on the questions its base model answers correctly.
- Degenerate generations: a stretch of one repeated token or a two-token loop, the signature of collapse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agentqat.errors import UserError

# A cloze target: a word of 4+ letters after a space that ends a sentence (., ! or ?, perhaps a closing
# quote or bracket, then whitespace or the end of the document).
_SENTENCE_FINAL_WORD = re.compile(r"(?<=\S) [^\W\d_]{4,}(?=[.!?][\"')\]]?(?:\s|$))")
_NOT_WORD = re.compile(r"[^\w\s]")


# ------------------------------------------------------------------------------------------------ cloze
@dataclass(frozen=True)
class ClozeSet:
    """Cloze items packed for teacher forcing: each row is a context followed by its target minus the last token.

    Every context has `context_tokens` tokens, so the logits at `target_positions` predict the targets in every
    row; rows are right-padded, which a causal model never attends to from an earlier position.
    """

    input_ids: torch.Tensor  # (items, context_tokens + longest target - 1)
    attention_mask: torch.Tensor  # 1 on real tokens, 0 on padding
    targets: torch.Tensor  # (items, longest target): target token ids, -1 after a shorter target's end
    words: tuple[str, ...]  # each item's target word as the text spells it
    context_tokens: int

    @property
    def target_positions(self) -> torch.Tensor:
        """Returns the positions whose next-token logits predict the target tokens, shape (longest target,)."""
        return torch.arange(self.targets.shape[1]) + self.context_tokens - 1


def pack_cloze(
    contexts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], words: Sequence[str], pad_id: int
) -> ClozeSet:
    """Returns contexts (all of one length) and their non-empty targets packed as a ClozeSet."""
    context_tokens = len(contexts[0])
    if any(len(context) != context_tokens for context in contexts) or not all(targets):
        raise ValueError("cloze contexts must share one length and every target needs a token")
    longest = max(len(target) for target in targets)
    width = context_tokens + longest - 1
    rows = [list(context) + list(target[:-1]) for context, target in zip(contexts, targets)]
    return ClozeSet(
        input_ids=torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long),
        attention_mask=torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long),
        targets=torch.tensor([list(target) + [-1] * (longest - len(target)) for target in targets], dtype=torch.long),
        words=tuple(words),
        context_tokens=context_tokens,
    )


def cloze_items(
    tokenizer, heldout_text: str, count: int, context_tokens: int, seed: int, bos: int | None = None
) -> ClozeSet:
    """Returns `count` cloze items from held-out text, chosen by `seed`, with contexts of `context_tokens` tokens.

    The text is tokenized as one stream (documents one by one, joined by a newline, as `data.tokenize` does);
    a context is the `context_tokens` stream tokens before a sentence-final word of 4+ letters, and may reach
    back into earlier documents. Words whose tokens are not exactly those of " word" inside the stream are
    skipped, so every target is a whole word with its leading space. With `bos` (a token id) each context is that
    token and the `context_tokens - 1` stream tokens before the word.
    """
    documents = [line for line in heldout_text.splitlines() if line.strip()]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    candidates: list[tuple[int, list[int], str]] = []  # (stream position, target ids, word)
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        matches = list(_SENTENCE_FINAL_WORD.finditer(document))
        if matches:
            prefixes = tokenizer([document[: m.start()] for m in matches], add_special_tokens=False)["input_ids"]
            words = tokenizer([m.group() for m in matches], add_special_tokens=False)["input_ids"]
            for match, prefix, target in zip(matches, prefixes, words):
                end = len(prefix) + len(target)
                if ids[: len(prefix)] == prefix and ids[len(prefix) : end] == target:
                    candidates.append((len(stream) + len(prefix), target, match.group().strip()))
        stream.extend(ids)
        stream.extend(newline)
    eligible = [candidate for candidate in candidates if candidate[0] >= context_tokens]
    if len(eligible) < count:
        raise UserError(
            f"the held-out text holds {len(eligible)} cloze items with {context_tokens} tokens of context, "
            f"{count} are needed",
            "ask for fewer items or a shorter context, or use a corpus with a longer held-out split",
        )
    chosen = np.sort(np.random.default_rng(seed).choice(len(eligible), size=count, replace=False))
    items = [eligible[index] for index in chosen]
    return pack_cloze(
        contexts=[[bos, *stream[position - context_tokens + 1 : position]] if bos is not None
                  else stream[position - context_tokens : position] for position, _, _ in items],  # fmt: skip
        targets=[target for _, target, _ in items],
        words=[word for _, _, word in items],
        pad_id=_pad_id(tokenizer),
    )


@torch.inference_mode()
def cloze_accuracy(model: nn.Module, cloze_set: ClozeSet, batch_size: int = 16) -> tuple[float, list[bool]]:
    """Returns the share of cloze items whose every target token is the model's argmax, and each item's outcome."""
    positions = cloze_set.target_positions
    correct: list[bool] = []
    for input_ids, attention_mask, targets in zip(
        cloze_set.input_ids.split(batch_size),
        cloze_set.attention_mask.split(batch_size),
        cloze_set.targets.split(batch_size),
    ):
        logits = model(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), logits_to_keep=positions, use_cache=False
        ).logits
        targets = targets.to(logits.device)
        hits = (logits.argmax(dim=-1) == targets) | (targets < 0)
        correct.extend(hits.all(dim=1).tolist())
    return sum(correct) / len(correct), correct


# -------------------------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    """A plain-completion prompt and the one-word answer its continuation must start with."""

    prompt: str
    answer: str


def load_questions(path: Path | None = None) -> tuple[Question, ...]:
    """Returns the questions of a JSONL file of {"prompt", "answer"} objects (default: the packaged set)."""
    source = path or resources.files("agentqat") / "arena" / "questions.jsonl"
    questions = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            question = Question(prompt=entry["prompt"], answer=entry["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(
                f"{source} line {number} is not a question ({error})", 'write {"prompt": ..., "answer": ...}'
            ) from None
        if not question.prompt.strip() or len(question.answer.split()) != 1:
            raise UserError(f"{source} line {number} needs a prompt and a one-word answer", "fix the line")
        questions.append(question)
    return tuple(questions)


@torch.inference_mode()
def generate_token_ids(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16,
    bos: int | None = None,
) -> list[tuple[int, ...]]:
    """Returns each prompt's greedy continuation (each prompt opening with token `bos` when given): new token ids,
    cut before the first end-of-sequence token."""
    pad_id = _pad_id(tokenizer)
    stop_ids = _stop_ids(model, tokenizer)
    encoded = [[bos] * (bos is not None) + ids for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    continuations: list[tuple[int, ...]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        output = model.generate(
            input_ids=torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], dtype=torch.long, device=model.device),
            attention_mask=torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], dtype=torch.long, device=model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
        for row in output[:, width:].tolist():
            stop = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
            continuations.append(tuple(row[:stop]))
    return continuations


def answer_questions(
    model: nn.Module, tokenizer, questions: Sequence[Question], max_new_tokens: int = 8, batch_size: int = 16,
    bos: int | None = None,
) -> list[str]:
    """Returns the model's greedy continuation of each question's prompt, decoded."""
    continuations = generate_token_ids(model, tokenizer, [q.prompt for q in questions], max_new_tokens, batch_size, bos)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]


def exact_match(generated: str, answer: str) -> bool:
    """Returns whether the generation's first words are the answer's, ignoring case, punctuation and spacing."""
    expected = _words(answer)
    return bool(expected) and _words(generated)[: len(expected)] == expected


def qualifying_questions(
    model: nn.Module, tokenizer, questions: Sequence[Question], max_new_tokens: int = 8, batch_size: int = 16,
    bos: int | None = None,
) -> list[Question]:
    """Returns the questions the (base) model answers correctly."""
    generations = answer_questions(model, tokenizer, questions, max_new_tokens, batch_size, bos)
    return [question for question, generated in zip(questions, generations) if exact_match(generated, question.answer)]


@dataclass(frozen=True)
class Answers:
    """A model's answers to qualified questions: the exact-match share, the texts and their token ids."""

    score: float
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]  # as generated: collapse shows here, re-tokenized text can hide it


def qa_exact_match(
    model: nn.Module, tokenizer, qualified: Sequence[Question], max_new_tokens: int = 8, batch_size: int = 16,
    bos: int | None = None,
) -> Answers:
    """Returns the share of qualified questions the model answers correctly, with its generations."""
    if not qualified:
        raise UserError("no qualifying questions: the base model answers none correctly", "use a larger model")
    token_ids = generate_token_ids(model, tokenizer, [q.prompt for q in qualified], max_new_tokens, batch_size, bos)
    texts = tuple(tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids)
    hits = [exact_match(text, question.answer) for question, text in zip(qualified, texts)]
    return Answers(sum(hits) / len(hits), texts, tuple(token_ids))


# ----------------------------------------------------------------------------------------- degeneration
def is_degenerate(token_ids: Sequence[int], max_period: int = 2, min_length: int = 6) -> bool:
    """Returns whether `token_ids` hold `min_length`+ consecutive tokens repeating with a period <= `max_period`."""
    for period in range(1, max_period + 1):
        run = 0  # consecutive positions i with token_ids[i] == token_ids[i - period]
        for i in range(period, len(token_ids)):
            run = run + 1 if token_ids[i] == token_ids[i - period] else 0
            if run + period >= min_length:
                return True
    return False


def degenerate_share(generations_token_ids: Sequence[Sequence[int]]) -> float:
    """Returns the share of generations that are degenerate (see `is_degenerate`)."""
    if not generations_token_ids:
        raise ValueError("degenerate_share needs at least one generation")
    return sum(is_degenerate(ids) for ids in generations_token_ids) / len(generations_token_ids)


# ------------------------------------------------------------------------------------------------ helpers
def _words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower()).split()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _stop_ids(model: nn.Module, tokenizer) -> set[int]:
    """Returns the token ids that end a generation: the model's end-of-sequence ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return {*configured, tokenizer.eos_token_id} - {None}
