"""AdamW, Adam and SGD over K stacked copies of each tensor, each copy with its own rates.

The optimizer of batched trials (``lrsearch.training.stacked``): what ``torch.optim`` computes, for
``[K, ...]`` tensors whose copy k belongs to trial k. A copy frozen in its trial (rate 0) gets no
update at all, weight decay included.

A step is a few multi-tensor (``torch._foreach_*``) kernels, not a dozen kernels per tensor: the
moments are updated over every stacked tensor at once, and the rate-dependent updates over every
tensor a copy trains, one call per copy with that copy's rates as Python floats (so no rate waits
for the device, and each copy's arithmetic is torch's own, rate for rate). On an H200 the
per-tensor version launched ~1,000 kernels a batched MiniLM step (``benchmarks/profile_trial.py``)
while the GPU idled. No memory beyond the moments and one step's temporaries.
"""

from __future__ import annotations

import math

import torch


def _grad(param: torch.Tensor) -> torch.Tensor:
    """``param``'s gradient (zeros when backward gave it none)."""
    return param.grad if param.grad is not None else torch.zeros_like(param)


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
        self.names = list(lrs)
        # Known on the host, as Python floats: a step never waits for the device to read a rate.
        self.lrs = {n: lrs[n].to(torch.float64).cpu() for n in self.names}
        self.decay = {n: decay[n].to(torch.float64).cpu() for n in self.names}
        moments = 2 if kind != "sgd" else 1 if momentum else 0
        self.state = [[torch.zeros_like(params[n]) for n in self.names] for _ in range(moments)]
        self._copies()

    def _copies(self) -> None:
        """Per copy: the positions of the tensors it trains, their rates and weight decays."""
        k = len(self.lrs[self.names[0]]) if self.names else 0
        self.trained = [
            [i for i, n in enumerate(self.names) if self.lrs[n][c] > 0] for c in range(k)
        ]
        self.rates = [
            [float(self.lrs[self.names[i]][c]) for i in t] for c, t in enumerate(self.trained)
        ]
        self.decays = [
            [float(self.decay[self.names[i]][c]) for i in t] for c, t in enumerate(self.trained)
        ]

    @torch.no_grad()
    def step(
        self,
        params: dict[str, torch.Tensor],
        step: int,
        factor: float = 1.0,
        *,
        clip: float | None = None,
    ) -> None:
        """Update ``params`` in place from their ``.grad``; ``step`` counts from 1.

        ``clip`` clips each copy's gradient norm over the tensors it trains (a frozen copy's
        gradient counts nowhere), as ``clip_grad_norm_`` over one trial's parameters.
        """
        if not self.names:
            return
        p_all = [params[n].detach() for n in self.names]
        g_all = [_grad(params[n]) for n in self.names]
        # Per copy, views of the tensors it trains: [copy][position in self.trained[copy]].
        p_views = [t.unbind(0) for t in p_all]
        g_views = [t.unbind(0) for t in g_all]
        ps = [[p_views[i][c] for i in t] for c, t in enumerate(self.trained)]
        gs = [[g_views[i][c] for i in t] for c, t in enumerate(self.trained)]
        if clip:
            for grads in gs:
                if grads:
                    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                    torch._foreach_mul_(grads, (clip / (norm + 1e-6)).clamp(max=1.0))
        if self.kind != "adamw":
            # L2 in the gradient, as Adam and SGD do (per copy: its own decay, where it trains).
            for c, grads in enumerate(gs):
                if any(self.decays[c]):
                    torch._foreach_add_(grads, torch._foreach_mul(ps[c], self.decays[c]))
        if self.kind == "sgd":
            if self.momentum:
                (bufs,) = self.state
                # From zeros: buf = g at first, as in torch. A frozen copy's buffer is never read.
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, g_all)
                b_views = [t.unbind(0) for t in bufs]
                gs = [[b_views[i][c] for i in t] for c, t in enumerate(self.trained)]
            for c, grads in enumerate(gs):
                if grads:
                    rates = [-lr * factor for lr in self.rates[c]]
                    torch._foreach_add_(ps[c], torch._foreach_mul(grads, rates))
            return
        beta1, beta2 = self.betas
        exp_avgs, exp_avg_sqs = self.state
        # The moments of every copy at once; a frozen copy's moments are never read.
        torch._foreach_lerp_(exp_avgs, g_all, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, g_all, g_all, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(1 - beta2**step))
        torch._foreach_add_(denoms, self.eps)
        m_views = [t.unbind(0) for t in exp_avgs]
        d_views = [t.unbind(0) for t in denoms]
        for c, t in enumerate(self.trained):
            if not t:
                continue
            lrs = [lr * factor for lr in self.rates[c]]
            if self.kind == "adamw" and any(self.decays[c]):
                torch._foreach_mul_(
                    ps[c], [1 - lr * wd for lr, wd in zip(lrs, self.decays[c], strict=True)]
                )
            torch._foreach_addcdiv_(
                ps[c],
                [m_views[i][c] for i in t],
                [d_views[i][c] for i in t],
                [-lr / (1 - beta1**step) for lr in lrs],
            )

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the copies at ``index`` (a ``long`` tensor)."""
        cpu = index.cpu()
        self.lrs = {n: lr[cpu] for n, lr in self.lrs.items()}
        self.decay = {n: d[cpu] for n, d in self.decay.items()}
        self.state = [[s[index.to(s.device)] for s in moment] for moment in self.state]
        self._copies()
