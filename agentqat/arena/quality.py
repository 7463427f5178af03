"""Quality of a model on token windows: perplexity, and KL divergence / top-1 agreement with the base model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Returns the mean next-token negative log-likelihood of each window, shape (windows,)."""
    losses = []
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        losses.append(nll.mean(dim=1))
    return torch.cat(losses)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Returns the perplexity over all predicted tokens of the windows (equal-length windows)."""
    return math.exp(window_nll(model, windows, batch_size).mean().item())


@dataclass(frozen=True)
class Reference:
    """What comparisons need of the base model on some windows, precomputed once.

    KL(p || q) = sum p log p - sum p log q, and log q = logits - logsumexp(logits), so per position
    KL = neg_entropy - (p . logits) + logsumexp(logits): one product with the stored probabilities and one
    logsumexp per comparison, instead of a full log-softmax and several passes over the vocabulary.
    """

    windows: torch.Tensor
    probs: torch.Tensor  # (windows, tokens - 1, vocab) base next-token probabilities, float16
    neg_entropy: torch.Tensor  # (windows, tokens - 1) sum p log p, float32
    argmax: torch.Tensor  # (windows, tokens - 1) the base's most likely next token
    nll: torch.Tensor  # the base model's mean next-token NLL per window

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.mean().item())


@dataclass(frozen=True)
class Comparison:
    """Per-window quality of a model against a Reference."""

    nll: torch.Tensor  # mean next-token NLL per window
    kl: torch.Tensor  # mean KL(base || model) per window, nats per token
    top1: torch.Tensor  # share of positions where the argmax token agrees with the base's
    finite: bool  # False when any logit was NaN or infinite

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.mean().item())


@torch.inference_mode()
def reference_of(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> Reference:
    """Returns the base model's next-token distributions on `windows`, in the form `compare` needs."""
    probs, neg_entropy, argmax, nll = [], [], [], []
    for batch in windows.split(batch_size):
        log_probs = F.log_softmax(model(input_ids=batch).logits[:, :-1].float(), dim=-1)
        p = log_probs.exp()
        probs.append(p.to(torch.float16))
        neg_entropy.append((p * log_probs).sum(-1))
        argmax.append(log_probs.argmax(-1))
        nll.append(-log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1).mean(dim=1))
    return Reference(windows, torch.cat(probs), torch.cat(neg_entropy), torch.cat(argmax), torch.cat(nll))


@torch.inference_mode()
def compare(model: nn.Module, reference: Reference, batch_size: int = 4) -> Comparison:
    """Returns NLL, KL(base || model) and top-1 agreement of `model` on the reference's windows."""
    nll, kl, top1, finite = [], [], [], True
    batches = zip(
        reference.windows.split(batch_size),
        reference.probs.split(batch_size),
        reference.neg_entropy.split(batch_size),
        reference.argmax.split(batch_size),
    )
    for batch, probs, neg_entropy, base_argmax in batches:
        logits = model(input_ids=batch).logits[:, :-1].float()
        log_normalizer = torch.logsumexp(logits, dim=-1)
        expected_logit = torch.einsum("btv,btv->bt", probs.float(), logits)
        # KL is never negative; rounding can take a near-zero position a hair below zero.
        position_kl = (neg_entropy - expected_logit + log_normalizer).clamp_min(0)
        # A NaN or +inf logit makes its row's logsumexp non-finite, a -inf one where the base has mass makes
        # the KL infinite: checking these reductions spares a pass over the whole logits tensor.
        finite = finite and bool(torch.isfinite(log_normalizer).all() and torch.isfinite(position_kl).all())
        kl.append(position_kl.mean(dim=1))
        target_logit = logits.gather(-1, batch[:, 1:, None]).squeeze(-1)
        nll.append((log_normalizer - target_logit).mean(dim=1))
        top1.append((logits.argmax(-1) == base_argmax).float().mean(dim=1))
    return Comparison(torch.cat(nll), torch.cat(kl), torch.cat(top1), finite)
