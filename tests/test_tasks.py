"""Tests of agentqat.arena.tasks on the session's tiny Llama (and, marked slow, on the real default model)."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest
import torch

from agentqat.arena.tasks import (
    Question,
    answer_questions,
    cloze_accuracy,
    cloze_items,
    degenerate_share,
    exact_match,
    generate_token_ids,
    is_degenerate,
    load_questions,
    pack_cloze,
    qa_exact_match,
    qualifying_questions,
)
from agentqat.data import load_corpus, tokenize
from agentqat.defaults import CACHE_ENV
from agentqat.errors import UserError
from agentqat.models import load_model

CONTEXT = 32


@pytest.fixture(scope="module")
def heldout():
    return load_corpus().heldout


def _sharpened(directory):
    """The tiny Llama with its decoder layers' matrices scaled by 10: at the default scale (0.02) attention barely
    moves the residual stream, so its outputs hardly depend on earlier tokens and padding mistakes would not show."""
    loaded = load_model(str(directory))
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if ".layers." in name and parameter.ndim == 2:
                parameter.mul_(10)
    return loaded


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return _sharpened(tiny_llama_dir)


@pytest.fixture(scope="module")
def stream(tiny, heldout):
    """The held-out split as one token stream, as `data.tokenize` builds it."""
    return tokenize(tiny.tokenizer, heldout)


# ------------------------------------------------------------------------------------------------ cloze
def test_cloze_items_are_deterministic_by_seed(tiny, heldout):
    first, again = (cloze_items(tiny.tokenizer, heldout, 16, CONTEXT, seed=3) for _ in range(2))
    other = cloze_items(tiny.tokenizer, heldout, 16, CONTEXT, seed=4)
    assert torch.equal(first.input_ids, again.input_ids) and first.words == again.words
    assert first.words != other.words
    assert first.input_ids.shape[0] == 16 and first.context_tokens == CONTEXT


def test_cloze_targets_are_sentence_final_words_of_the_stream(tiny, heldout, stream):
    cloze = cloze_items(tiny.tokenizer, heldout, 16, CONTEXT, seed=0)
    tokenizer = tiny.tokenizer
    for row, mask, targets, word in zip(cloze.input_ids, cloze.attention_mask, cloze.targets, cloze.words):
        target = targets[targets >= 0].tolist()
        assert len(word) >= 4 and word.isalpha()
        assert tokenizer.decode(target) == " " + word
        # Context and target sit next to each other in the held-out stream, the word ending a sentence.
        item = torch.tensor(row[:CONTEXT].tolist() + target)
        assert (stream.unfold(0, len(item), 1) == item).all(dim=1).any()
        assert re.search(re.escape(tokenizer.decode(item[-12:])) + r"[.!?]", heldout)
        # Right padding: the context, all but the last target token, then padding.
        assert mask.tolist() == [1] * (CONTEXT + len(target) - 1) + [0] * (len(row) - CONTEXT - len(target) + 1)
        assert row[CONTEXT : CONTEXT + len(target) - 1].tolist() == target[:-1]
    assert (cloze.targets >= 0).sum(dim=1).max() > 1, "the tiny BPE splits some words: multi-token targets are tested"


def test_cloze_items_refuses_more_items_than_the_text_holds(tiny, heldout):
    with pytest.raises(UserError, match="cloze items"):
        cloze_items(tiny.tokenizer, heldout, 100_000, CONTEXT, seed=0)


@torch.inference_mode()
def _greedy(model, ids: list[int], steps: int) -> list[int]:
    """The unbatched, unpadded reference: `steps` tokens of greedy decoding after `ids`, one forward pass each."""
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


def test_cloze_accuracy_agrees_with_one_by_one_greedy_decoding(tiny, heldout):
    cloze = cloze_items(tiny.tokenizer, heldout, 12, CONTEXT, seed=1)
    accuracy, correct = cloze_accuracy(tiny.model, cloze, batch_size=5)
    reference = []
    for row, targets in zip(cloze.input_ids, cloze.targets):
        target = targets[targets >= 0].tolist()
        reference.append(_greedy(tiny.model, row[:CONTEXT].tolist(), len(target)) == target)
    assert correct == reference
    assert 0.0 <= accuracy <= 1.0 and accuracy == sum(reference) / len(reference)


def test_cloze_accuracy_scores_targets_the_model_predicts(tiny, stream):
    # Targets of 1 to 3 tokens that are the model's own greedy continuations: every item is correct;
    # changing one target token makes exactly that item wrong, whatever the batch size.
    contexts = [stream[start : start + CONTEXT].tolist() for start in range(0, 9 * 97, 97)]
    targets = [_greedy(tiny.model, context, 1 + i % 3) for i, context in enumerate(contexts)]
    cloze = pack_cloze(contexts, targets, [f"item{i}" for i in range(len(contexts))], pad_id=3)
    assert cloze_accuracy(tiny.model, cloze, batch_size=4) == (1.0, [True] * 9)
    wrong = [list(target) for target in targets]
    for i in (2, 4):  # the last token of a 3-token and of a 2-token target
        wrong[i][-1] = (wrong[i][-1] + 1) % 512
    expected = [i not in (2, 4) for i in range(9)]
    damaged = dataclasses.replace(cloze, targets=pack_cloze(contexts, wrong, cloze.words, pad_id=3).targets)
    for batch_size in (1, 4, 9):
        assert cloze_accuracy(tiny.model, damaged, batch_size) == (7 / 9, expected)


# ------------------------------------------------------------------------------------------- questions
@pytest.mark.parametrize(
    "generated, answer, expected",
    [
        (" Paris.\n\nThe answer is:", "Paris", True),
        ("paris", "Paris", True),
        ("PARIS!", "paris", True),
        ("  \n Paris, France", "Paris", True),
        (' "Paris"', "Paris", True),
        (" 4.", "4", True),
        (" 100°C, which", "100", True),
        (" H2O.", "H2O", True),
        (" Washington D.C. The", "Washington", True),
        (" the capital of France", "Paris", False),
        (" Parisian", "Paris", False),
        (" 40", "4", False),
        ("", "Paris", False),
        ("...", "Paris", False),
        (" New York", "New York", True),
        (" New Jersey", "New York", False),
    ],
)
def test_exact_match(generated, answer, expected):
    assert exact_match(generated, answer) is expected


def test_packaged_questions_parse_with_one_word_answers():
    questions = load_questions()
    assert 70 <= len(questions) <= 100
    assert len({q.prompt for q in questions}) == len(questions)
    for question in questions:
        assert question.prompt.strip() and question.prompt == question.prompt.rstrip()
        assert len(question.answer.split()) == 1 and exact_match(question.answer, question.answer)


@pytest.mark.parametrize(
    "line",
    ['{"prompt": "The capital of France is", "answer": "Paris France"}', '{"prompt": "x"}', "not json", '["a", "b"]'],
)
def test_load_questions_rejects_bad_lines(tmp_path, line):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"prompt": "The sky is", "answer": "blue"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match="line 2"):
        load_questions(path)


PROMPTS = ["The capital of France is", "2 + 2 =", "The opposite of hot is", "A", "Monday, Tuesday, Wednesday,"]


def test_generation_is_deterministic_and_independent_of_batch_size(tiny):
    # Batch 1 has no padding at all, so equal outputs in batches of 2 and 5 show the left padding is right.
    single = generate_token_ids(tiny.model, tiny.tokenizer, PROMPTS, batch_size=1)
    assert generate_token_ids(tiny.model, tiny.tokenizer, PROMPTS, batch_size=5) == single
    assert generate_token_ids(tiny.model, tiny.tokenizer, PROMPTS, batch_size=5) == single  # again: deterministic
    assert [len(ids) for ids in single] == [8] * len(PROMPTS)
    # The check has teeth: the same batch attending to its padding generates something else.
    encoded = tiny.tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    width = max(len(ids) for ids in encoded)
    padded = torch.tensor([[3] * (width - len(ids)) + ids for ids in encoded])
    unmasked = tiny.model.generate(
        padded, attention_mask=torch.ones_like(padded), max_new_tokens=8, do_sample=False, pad_token_id=3
    )
    assert [tuple(row) for row in unmasked[:, width:].tolist()] != single
    questions = [Question(prompt, "x") for prompt in PROMPTS]
    decoded = answer_questions(tiny.model, tiny.tokenizer, questions, batch_size=3)
    assert decoded == [tiny.tokenizer.decode(ids, skip_special_tokens=True) for ids in single]


def test_generation_stops_before_an_end_of_sequence_token(tiny_llama_dir):
    loaded = _sharpened(tiny_llama_dir)
    full = generate_token_ids(loaded.model, loaded.tokenizer, PROMPTS[:1])[0]
    loaded.model.generation_config.eos_token_id = [full[2], 2]  # as if the model's third token ended its turn
    assert generate_token_ids(loaded.model, loaded.tokenizer, PROMPTS[:1]) == [full[: full.index(full[2])]]


def test_qualifying_questions_and_qa_exact_match(tiny):
    # Questions whose answer is the tiny model's own first word qualify; the others do not.
    generations = answer_questions(tiny.model, tiny.tokenizer, [Question(p, "x") for p in PROMPTS])
    first_words = [re.sub(r"[^\w\s]", " ", g).split() for g in generations]
    right = [Question(p, words[0]) for p, words in zip(PROMPTS, first_words) if words]
    wrong = [Question(p, "zebra") for p in PROMPTS]
    assert right
    qualified = qualifying_questions(tiny.model, tiny.tokenizer, wrong[:2] + right + wrong[2:], batch_size=6)
    assert qualified == right
    answers = qa_exact_match(tiny.model, tiny.tokenizer, qualified, batch_size=3)
    assert answers.score == 1.0 and len(answers.texts) == len(answers.token_ids) == len(right)
    assert answers.texts == tuple(tiny.tokenizer.decode(ids, skip_special_tokens=True) for ids in answers.token_ids)
    assert qa_exact_match(tiny.model, tiny.tokenizer, wrong).score == 0.0
    with pytest.raises(UserError, match="no qualifying questions"):
        qa_exact_match(tiny.model, tiny.tokenizer, [])


# ---------------------------------------------------------------------------------------- degeneration
@pytest.mark.parametrize(
    "ids, expected",
    [
        ([], False),
        ([7], False),
        ([7] * 5, False),
        ([7] * 6, True),
        ([1, 2] + [7] * 6, True),
        ([7] * 6 + [1, 2], True),
        ([1, 2] * 3, True),
        ([1, 2, 1, 2, 1], False),
        ([9, 1, 2, 1, 2, 1, 2, 9], True),
        ([1, 2, 3] * 4, False),  # a period of 3 is not flagged
        ([5, 6, 7, 8, 9, 10, 11, 12], False),
        ([5, 5, 6, 6, 7, 7, 8, 8], False),
        ([5, 6, 6, 6, 6, 7, 8, 9], False),
    ],
)
def test_is_degenerate(ids, expected):
    assert is_degenerate(ids) is expected


def test_degenerate_share():
    assert degenerate_share([[1, 2, 3], [4] * 8, [1, 2] * 4, [5]]) == 0.5
    assert degenerate_share([[1, 2, 3]]) == 0.0
    with pytest.raises(ValueError):
        degenerate_share([])


# ---------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_default_model_answers_questions_and_cloze(monkeypatch):
    if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
        monkeypatch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
    loaded = load_model()
    qualified = qualifying_questions(loaded.model, loaded.tokenizer, load_questions())
    assert len(qualified) >= 10
    # Scored in other batches than during qualification, the base model still answers all of them.
    answers = qa_exact_match(loaded.model, loaded.tokenizer, qualified, batch_size=8)
    assert answers.score == 1.0, [g for g, q in zip(answers.texts, qualified) if not exact_match(g, q.answer)]
    cloze = cloze_items(loaded.tokenizer, load_corpus().heldout, 32, 128, seed=0)
    accuracy, _ = cloze_accuracy(loaded.model, cloze)
    assert accuracy > 0
