"""AdamW, Adam and SGD over K stacked copies of each tensor, each copy with its own rates.

The optimizer of batched trials (``lrsearch.training.stacked``): what ``torch.optim`` computes, for
``[K, ...]`` tensors whose copy k belongs to trial k. A copy frozen in its trial (rate 0) gets no
update at all, weight decay included.
"""

from __future__ import annotations

import math

import torch


def per_copy(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[K]`` vector shaped to broadcast over a stacked tensor ``[K, ...]``, in its dtype."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """AdamW, Adam or SGD (as torch computes them) over stacked ``[K, ...]`` tensors.

    Each tensor has a ``[K]`` base rate (0: frozen in that copy, which then gets no update at all,
    weight decay included) and a ``[K]`` weight decay; ``step`` scales the rates by the schedule's
    factor. Hyperparameters are torch's defaults, as ``make_optimizer`` uses them.
    """

    def __init__(
        self,
        kind: str,
        params: dict[str, torch.Tensor],
        lrs: dict[str, torch.Tensor],
        decay: dict[str, torch.Tensor],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
    ) -> None:
        self.kind, self.betas, self.eps, self.momentum = kind, betas, eps, momentum
        # On the tensors' device, in float64 (torch's rates are Python floats): no copy per step.
        self.lrs = {n: lr.to(params[n].device, torch.float64) for n, lr in lrs.items()}
        self.decay = {
            n: decay[n].to(lr.device, torch.float64) * (lr > 0) for n, lr in self.lrs.items()
        }
        # What the step's branches need, known on the host: no wait for the GPU in a step.
        self._host_lrs = {n: lr.to(torch.float64) for n, lr in lrs.items()}
        self._host_decay = {n: decay[n].to(torch.float64) for n in lrs}
        self._flags()
        moments = 2 if kind != "sgd" else 1 if momentum else 0
        self.state = {n: [torch.zeros_like(params[n]) for _ in range(moments)] for n in lrs}

    def _flags(self) -> None:
        self.all_train = {n: bool(lr.all()) for n, lr in self._host_lrs.items()}
        self.any_decay = {
            n: bool((self._host_decay[n] * (lr > 0)).any()) for n, lr in self._host_lrs.items()
        }

    @torch.no_grad()
    def zero_frozen(self, params: dict[str, torch.Tensor]) -> None:
        """Zero the gradient of each copy where its group is frozen (before clipping norms)."""
        for name, base_lr in self.lrs.items():
            grad = params[name].grad
            if grad is not None and not self.all_train[name]:
                grad.copy_(torch.where(per_copy(base_lr > 0, grad).bool(), grad, 0))

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], step: int, factor: float = 1.0) -> None:
        """Update ``params`` in place from their ``.grad``; ``step`` counts from 1."""
        beta1, beta2 = self.betas
        for name, base_lr in self.lrs.items():
            p = params[name]
            lr64, decay = base_lr * factor, self.decay[name]
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if not self.all_train[name]:
                # Zeroed where the group is frozen: a NaN there must not leak in through 0 * NaN.
                g = torch.where(per_copy(base_lr > 0, p).bool(), g, 0)
            if self.kind != "adamw" and self.any_decay[name]:
                g = g.add(p * per_copy(decay, p))  # L2 in the gradient, as Adam and SGD do
            if self.kind == "sgd":
                if self.momentum:
                    (buf,) = self.state[name]
                    buf.mul_(self.momentum).add_(g)  # from zeros: buf = g at first, as in torch
                    g = buf
                p.sub_(per_copy(lr64, p) * g)
                continue
            exp_avg, exp_avg_sq = self.state[name]
            if self.kind == "adamw":
                p.mul_(per_copy(1 - lr64 * decay, p))
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = per_copy(lr64 / (1 - beta1**step), p)
            # torch's (exp_avg / (sqrt(v) / sqrt(bc2) + eps)) * step_size, in one buffer.
            update = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(self.eps)
            p.sub_(update.reciprocal_().mul_(exp_avg).mul_(step_size))

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the copies at ``index`` (a ``long`` tensor)."""
        for name in self.lrs:
            on = index.to(self.lrs[name].device)
            self.lrs[name] = self.lrs[name][on]
            self.decay[name] = self.decay[name][on]
            self._host_lrs[name] = self._host_lrs[name][index.cpu()]
            self._host_decay[name] = self._host_decay[name][index.cpu()]
            self.state[name] = [s[index.to(s.device)] for s in self.state[name]]
        self._flags()
