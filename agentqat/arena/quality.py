"""Quality of a model on token windows: perplexity, and KL divergence / top-1 agreement with the base model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentqat.layerwise import logit_batches


@torch.inference_mode()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, sequential: bool = False) -> torch.Tensor:
    """Returns the mean next-token negative log-likelihood of each window, shape (windows,), on the CPU (the model
    runs on its device, whole or, `sequential`, layer by layer: agentqat.layerwise)."""
    losses = []
    for batch, logits in logit_batches(model, windows, batch_size, sequential):
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch[:, 1:], reduction="none")
        losses.append(nll.mean(dim=1).cpu())
    return torch.cat(losses)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, sequential: bool = False) -> float:
    """Returns the perplexity over all predicted tokens of the windows (equal-length windows)."""
    return math.exp(window_nll(model, windows, batch_size, sequential).mean().item())


@dataclass(frozen=True)
class Reference:
    """What comparisons need of the base model on some windows, precomputed once.

    KL(p || q) = sum p log p - sum p log q, and log q = logits - logsumexp(logits), so per position
    KL = neg_entropy - (p . logits) + logsumexp(logits): one product with the stored probabilities and one
    logsumexp per comparison, instead of a full log-softmax and several passes over the vocabulary.
    Its tensors live on the CPU (the host), whatever the model's device: a comparison moves one batch at a time.
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
def reference_of(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, sequential: bool = False) -> Reference:
    """Returns the base model's next-token distributions on `windows`, in the form `compare` needs (computed on the
    model's device, whole or `sequential`; kept on the CPU)."""
    probs, neg_entropy, argmax, nll = [], [], [], []
    for batch, logits in logit_batches(model, windows, batch_size, sequential):
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        p = log_probs.exp()
        probs.append(p.to(torch.float16).cpu())
        neg_entropy.append((p * log_probs).sum(-1).cpu())
        argmax.append(log_probs.argmax(-1).cpu())
        nll.append(-log_probs.gather(-1, batch[:, 1:, None]).squeeze(-1).mean(dim=1).cpu())
    return Reference(windows, torch.cat(probs), torch.cat(neg_entropy), torch.cat(argmax), torch.cat(nll))


@torch.inference_mode()
def compare(model: nn.Module, reference: Reference, batch_size: int = 4, sequential: bool = False) -> Comparison:
    """Returns NLL, KL(base || model) and top-1 agreement of `model` on the reference's windows (computed on the
    model's device, whole or `sequential`; returned on the CPU)."""
    nll, kl, top1, finite = [], [], [], True
    batches = zip(
        logit_batches(model, reference.windows, batch_size, sequential),
        reference.probs.split(batch_size),
        reference.neg_entropy.split(batch_size),
        reference.argmax.split(batch_size),
    )
    for (batch, logits), probs, neg_entropy, base_argmax in batches:
        logits = logits[:, :-1].float()
        device = logits.device
        probs, neg_entropy, base_argmax = probs.to(device), neg_entropy.to(device), base_argmax.to(device)
        log_normalizer = torch.logsumexp(logits, dim=-1)
        expected_logit = torch.einsum("btv,btv->bt", probs.float(), logits)
        # KL is never negative; rounding can take a near-zero position a hair below zero.
        position_kl = (neg_entropy - expected_logit + log_normalizer).clamp_min(0)
        # A NaN or +inf logit makes its row's logsumexp non-finite, a -inf one where the base has mass makes
        # the KL infinite: checking these reductions spares a pass over the whole logits tensor.
        finite = finite and bool(torch.isfinite(log_normalizer).all() and torch.isfinite(position_kl).all())
        kl.append(position_kl.mean(dim=1).cpu())
        target_logit = logits.gather(-1, batch[:, 1:, None]).squeeze(-1)
        nll.append((log_normalizer - target_logit).mean(dim=1).cpu())
        top1.append((logits.argmax(-1) == base_argmax).float().mean(dim=1).cpu())
    return Comparison(torch.cat(nll), torch.cat(kl), torch.cat(top1), finite)
