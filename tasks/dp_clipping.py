"""Per-user gradient clipping in ONE backward pass (Book-Keeping clipping, Bu et al., ICML 2023).

DP-SGD needs ``sum_i c_i g_i`` with ``g_i`` user ``i``'s gradient and ``c_i = min(1, C / (|g_i| +
1e-6))`` (Opacus' clip factor). Opacus' ghost clipping gets the norms from a first backward pass and
the weighted sum from a second one. Every trainable layer here is an ``nn.Linear`` or ``nn.Embedding``,
whose per-user gradient is a product of what the layer saw (its input ``a_i``) and the loss gradient
at its output (``b_i``): ``g_i = b_i^T a_i`` (summed over the user's rows). So one backward pass to the
layer OUTPUTS (``torch.autograd.grad``: no weight gradients computed) gives every ``b_i``; the norms
come from ``a_i`` and ``b_i`` (the ghost norm ``<a_i a_i^T, b_i b_i^T>`` or the instantiated ``b_i^T
a_i``, whichever is cheaper for the layer's shapes), and the clipped sum is one matmul per layer,
``(c * b)^T a``, the cost of the weight gradient the plain step computes anyway.

What leaves this module is only the clipped SUM (``p.grad``); the noise, its scale (the ledger's
noise multiplier x the clip), the division by the expected batch size and the accountant's step are
Opacus' ``DPOptimizerFastGradientClipping`` and ``RDPAccountant``, exactly as in its ghost mode
(:func:`tasks.training.make_private_trainer`). ``tests/unit/test_dp_clipping.py`` pins the update
against Opacus' own implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CLIP_EPS = 1e-6  # Opacus' clip factor: C / (norm + 1e-6)


@dataclass
class _Call:
    """One layer call of a forward pass: the layer, its input and its output."""

    layer: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


class BookKeepingModule(nn.Module):
    """``model`` whose trainable layers record their input and output in every training forward pass.

    Refuses a model with trainable parameters outside ``nn.Linear`` / ``nn.Embedding`` layers (no
    per-user gradient formula here for them) and, at run time, a layer called twice in one forward
    (its per-user gradient would be the sum of two products, whose norm this does not compute).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._module = model
        self.calls: list[_Call] = []
        self.per_sample_gradient_norms: torch.Tensor | None = None
        self.layers: list[nn.Module] = []
        for name, layer in model.named_modules():
            own = [p for p in layer.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if isinstance(layer, nn.Embedding):
                if layer.max_norm is not None or layer.scale_grad_by_freq or layer.sparse:
                    raise ValueError(f"{name}: Embedding with max_norm / scale_grad_by_freq / sparse")
            elif not isinstance(layer, nn.Linear):
                raise ValueError(f"{name}: {type(layer).__name__} has no one-pass per-user gradient here")
            self.layers.append(layer)
            layer.register_forward_hook(self._record)

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (self._module.training and torch.is_grad_enabled()):
            return
        if any(call.layer is layer for call in self.calls):
            raise RuntimeError(f"{type(layer).__name__} called twice in one forward pass")
        self.calls.append(_Call(layer, inputs[0].detach(), output))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls = []
        return self._module(*args, **kwargs)

    def clipped_backward(self, loss_per_sample: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        """Set every trainable ``p.grad`` to the sum over users of their gradient (of their own loss
        ``loss_per_sample[i]``) clipped to ``max_grad_norm``; return the unclipped per-user norms."""
        calls, self.calls = self.calls, []
        if len(calls) != len(self.layers):
            missing = [type(x).__name__ for x in self.layers if all(c.layer is not x for c in calls)]
            raise RuntimeError(f"trainable layers not used in this forward pass: {missing}")
        n = loss_per_sample.shape[0]
        for call in calls:  # each row of a layer's input and output must belong to one user
            if call.inputs.shape[0] != n or call.output.shape[0] != n:
                raise RuntimeError(
                    f"{type(call.layer).__name__} ran on a leading dimension of {call.inputs.shape[0]}, not the "
                    f"batch's {n} users: its rows cannot be attributed to users, so its gradient cannot be clipped"
                )
        outputs = torch.autograd.grad(loss_per_sample.sum(), [c.output for c in calls])
        squared = torch.zeros(n, dtype=loss_per_sample.dtype, device=loss_per_sample.device)
        for call, grad in zip(calls, outputs, strict=True):
            squared += _norm_squared(call.layer, call.inputs, grad.detach())
        norms = squared.sqrt()
        coef = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        for call, grad in zip(calls, outputs, strict=True):
            _set_clipped_sum(call.layer, call.inputs, grad.detach(), coef)
        self.per_sample_gradient_norms = norms
        return norms


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]`` from ``[B, ..., d]`` (T = 1 for ``[B, d]``)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _norm_squared(layer: nn.Module, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``[B]``: squared norm of each user's gradient of ``layer``'s parameters."""
    g = _rows(grad)
    if isinstance(layer, nn.Embedding):
        index = inputs.reshape(inputs.shape[0], -1)
        if layer.padding_idx is not None:  # the padding row gets no gradient
            g = g * (index != layer.padding_idx).unsqueeze(-1).to(g.dtype)
        same = (index.unsqueeze(2) == index.unsqueeze(1)).to(g.dtype)  # [B, T, T]
        return (same * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))
    assert isinstance(layer, nn.Linear)
    a = _rows(inputs)
    t, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        out = a.square().sum(dim=(1, 2)) * g.square().sum(dim=(1, 2))
    elif t * t * (d_in + d_out) <= d_in * d_out * t:  # ghost norm: <a a^T, g g^T> per user
        out = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))
    else:  # instantiate the per-user weight gradient
        out = torch.bmm(g.transpose(1, 2), a).square().sum(dim=(1, 2))
    if layer.bias is not None and layer.bias.requires_grad:
        out = out + g.sum(dim=1).square().sum(dim=1)
    return out


def _set_clipped_sum(layer: nn.Module, inputs: torch.Tensor, grad: torch.Tensor, coef: torch.Tensor) -> None:
    """``p.grad`` of ``layer``: the users' gradients weighted by ``coef`` and summed."""
    g = _rows(grad) * coef.view(-1, 1, 1)
    flat_g = g.reshape(-1, g.shape[-1])
    if isinstance(layer, nn.Embedding):
        index = inputs.reshape(-1)
        if layer.padding_idx is not None:
            flat_g = flat_g * (index != layer.padding_idx).unsqueeze(-1).to(flat_g.dtype)
        layer.weight.grad = torch.zeros_like(layer.weight).index_add_(0, index, flat_g)
        return
    assert isinstance(layer, nn.Linear)
    if layer.weight.requires_grad:
        layer.weight.grad = flat_g.T @ inputs.reshape(-1, inputs.shape[-1])
    if layer.bias is not None and layer.bias.requires_grad:
        layer.bias.grad = flat_g.sum(dim=0)


class ClippedLoss:
    """The batch loss whose ``backward()`` puts the clipped per-user gradient sum in ``p.grad``."""

    def __init__(
        self, module: BookKeepingModule, loss_per_sample: torch.Tensor, max_grad_norm: float
    ) -> None:
        self.module = module
        self.loss_per_sample = loss_per_sample
        self.max_grad_norm = max_grad_norm

    def backward(self) -> None:
        self.module.clipped_backward(self.loss_per_sample, self.max_grad_norm)

    def item(self) -> float:
        return float(self.loss_per_sample.detach().mean())


class BookKeepingLoss:
    """``criterion`` (with a ``reduction`` attribute) returning a :class:`ClippedLoss`."""

    def __init__(self, module: BookKeepingModule, criterion: nn.Module, max_grad_norm: float) -> None:
        if not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be a positive number, got {max_grad_norm}")
        self.module = module
        self.criterion = criterion
        self.max_grad_norm = max_grad_norm

    def __call__(self, *args: Any, **kwargs: Any) -> ClippedLoss:
        reduction: Callable[..., Any] | str = self.criterion.reduction  # type: ignore[assignment]
        self.criterion.reduction = "none"  # type: ignore[assignment]
        try:
            per_sample = self.criterion(*args, **kwargs)
        finally:
            self.criterion.reduction = reduction  # type: ignore[assignment]
        return ClippedLoss(self.module, per_sample, self.max_grad_norm)
