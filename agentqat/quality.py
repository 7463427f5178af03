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
    """The base model's next-token log-probabilities on some windows (fp16 to halve their memory)."""

    windows: torch.Tensor
    log_probs: torch.Tensor  # (windows, tokens - 1, vocab), float16
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
    """Returns the base model's log-probabilities on `windows`."""
    log_probs, nll = [], []
    for batch in windows.split(batch_size):
        batch_log_probs = F.log_softmax(model(input_ids=batch).logits[:, :-1].float(), dim=-1)
        nll.append(F.nll_loss(batch_log_probs.transpose(1, 2), batch[:, 1:], reduction="none").mean(dim=1))
        log_probs.append(batch_log_probs.to(torch.float16))
    return Reference(windows, torch.cat(log_probs), torch.cat(nll))


@torch.inference_mode()
def compare(model: nn.Module, reference: Reference, batch_size: int = 4) -> Comparison:
    """Returns NLL, KL(base || model) and top-1 agreement of `model` on the reference's windows."""
    nll, kl, top1, finite = [], [], [], True
    for batch, base in zip(reference.windows.split(batch_size), reference.log_probs.split(batch_size)):
        logits = model(input_ids=batch).logits[:, :-1].float()
        finite = finite and bool(torch.isfinite(logits).all())
        log_probs = F.log_softmax(logits, dim=-1)
        base = base.float()
        nll.append(F.nll_loss(log_probs.transpose(1, 2), batch[:, 1:], reduction="none").mean(dim=1))
        kl.append((base.exp() * (base - log_probs)).sum(-1).mean(dim=1))
        top1.append((base.argmax(-1) == log_probs.argmax(-1)).float().mean(dim=1))
    return Comparison(torch.cat(nll), torch.cat(kl), torch.cat(top1), finite)
