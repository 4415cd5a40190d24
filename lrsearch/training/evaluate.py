"""A task's metric over batches, without a wait per batch where the task allows it.

A task with the ``ScoredTask`` capability (``lrsearch.tasks``) scores each batch on the device as
``[sum, count]``; the metric is the sums' total over the counts' total, read once at the end (one
wait for the GPU per evaluation, not one per batch). K stacked trials score their copies of the
model together the same way (``lrsearch.training.stacked``). Other tasks call ``task.evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lrsearch.tasks import Batch, Task, scored


def evaluate(task: Task, model: nn.Module, batches: Iterable[Batch]) -> float:
    """The metric of ``model`` over ``batches`` (call in eval mode, under ``no_grad``)."""
    scorer = scored(task)
    if scorer is None:
        return float(task.evaluate(model, batches))
    total: torch.Tensor | None = None
    for batch in batches:
        part = scorer.score(model, batch).double()
        total = part if total is None else total + part
    return ratio(total)


def ratio(total: torch.Tensor | None) -> float:
    """``sum / count`` of a ``[sum, count]`` total (0 when nothing was scored)."""
    return ratios(None if total is None else total[None], 1)[0]


def ratios(totals: torch.Tensor | None, copies: int) -> list[float]:
    """``sum / count`` of each row of ``[K, 2]`` totals, read in one go (zeros when none)."""
    if totals is None:
        return [0.0] * copies
    return [float(done / max(count, 1.0)) for done, count in totals.tolist()]
