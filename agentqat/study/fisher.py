"""Gradient measures of every quantizable linear module: the diagonal Fisher information of the language-model loss
(the mean over windows of each weight's squared gradient, summed over the module's weights) and the norm of the
mean gradient, from one backward pass per calibration window. The model's weights are not changed; the gradients
are dropped afterwards."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agentqat.models import quantizable_linears
from agentqat.progress import Reporter, phase


@dataclass(frozen=True)
class GradientMeasures:
    """Per module name: diagonal Fisher information (sum over weights) and norm of the mean gradient."""

    fisher: dict[str, float]
    gradient_norm: dict[str, float]


def gradient_measures(model: nn.Module, windows: torch.Tensor, reporter: Reporter | None = None) -> GradientMeasures:
    """Returns the Fisher information and gradient norm of every quantizable linear module on `windows` (one
    window per backward pass, reported as the phase "Fisher information", one step per window)."""
    linears = quantizable_linears(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    for linear in linears.values():
        linear.weight.requires_grad_(True)
    squared = {name: torch.zeros_like(linear.weight) for name, linear in linears.items()}
    summed = {name: torch.zeros_like(linear.weight) for name, linear in linears.items()}
    try:
        with torch.enable_grad(), phase(reporter, "Fisher information", total=len(windows), detail=f"{len(windows)} windows, one backward pass each") as step:
            for window in windows:
                window = window.to(model.device)
                loss = model(input_ids=window[None], labels=window[None], use_cache=False).loss
                grads = torch.autograd.grad(loss, [linear.weight for linear in linears.values()])
                for name, grad in zip(linears, grads):
                    squared[name] += grad.square()
                    summed[name] += grad
                step()
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])
    count = len(windows)
    return GradientMeasures(
        fisher={name: (values / count).sum().item() for name, values in squared.items()},
        gradient_norm={name: (values / count).norm().item() for name, values in summed.items()},
    )
