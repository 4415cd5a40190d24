"""A study's training, set up and checked once: the task loads, its groups resolve, the space fits.

Used by the search before it touches a study, and by the retrainings of ``verify`` and ``confirm``.

:func:`prepare` builds one model to resolve the groups on and weigh them; nothing is written to a
study before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrsearch.errors import LrsearchError, TaskError
from lrsearch.groups import LayerGroups, resolve_groups
from lrsearch.space import Sample, SearchSpace
from lrsearch.spec import StudySpec
from lrsearch.tasks import Task, load_task
from lrsearch.training.common import TrainResult, resolve_device, resolve_precision

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """Everything checked before the study is touched."""

    spec: StudySpec
    task: Task
    groups: LayerGroups
    space: SearchSpace
    direction: str
    # Parameters per group, for [study] cost = "examples" (the share of the model that trains).
    sizes: dict[str, int] = field(default_factory=dict)

    def cost(self, result: TrainResult, sample: Sample) -> float:
        """The trial's training cost, as ``[study] cost`` measures it (see lrsearch.pick)."""
        if self.spec.study.cost == "examples":
            total = sum(self.sizes.values()) or 1
            trained = sum(n for g, n in self.sizes.items() if sample.lrs.get(g, 0.0) != 0)
            return float(result.steps * self.spec.train.batch_size) * trained / total
        return float(result.seconds)


def prepare(
    spec: StudySpec,
    *,
    device: str | None = None,
    check_device: bool = True,
    task: Task | None = None,
) -> Prepared:
    """Build the task, resolve the groups on one model and check the space, before any write.

    Args:
        spec: The study's spec.
        device: The device trials will run on (checked with ``[train] precision``).
        check_device: ``False`` skips the device check: ``create`` may run on a machine without
            the workers' GPUs.
        task: The task itself, in place of importing ``[task] entry`` (``lrsearch.search``'s
            in-memory model and data).

    Raises:
        LrsearchError: Any problem with the task, groups, space or device.
    """
    if check_device:
        resolve_precision(spec.train.precision, resolve_device(device))
    try:
        if task is None:
            folders = [spec.task.folder] if spec.task.folder else []
            task = load_task(spec.task.entry, spec.task.kwargs, folders=folders)
    except LrsearchError:
        raise
    except Exception as e:  # the task's own factory raised: a user error, not ours
        raise TaskError(
            f"task {spec.task.entry!r} failed to load with kwargs {spec.task.kwargs}: {e!r}"
        ) from e
    try:
        model = task.build_model()
    except LrsearchError:
        raise
    except Exception as e:
        raise TaskError(f"task {spec.task.entry!r} failed to build its model: {e!r}") from e
    groups = resolve_groups(model, spec.groups.patterns or None, auto_depth=spec.groups.auto_depth)
    space = SearchSpace(spec.space, groups.names)
    direction = spec.study.direction or task.direction
    params = dict(model.named_parameters())
    sizes = {g: sum(params[p].numel() for p in groups.members(g)) for g in groups.names}
    return Prepared(spec, task, groups, space, direction, sizes)
