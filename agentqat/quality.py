"""Quality of a model on token windows: per-window negative log-likelihood and perplexity."""

from __future__ import annotations

import math

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
