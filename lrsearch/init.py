"""``lrsearch init``: a ready-to-run study file for a model, with its module tree as comments.

The model is a built-in task (``digits_transfer``, ``rotten_tomatoes_minilm``,
``fashion_mnist_mobilenet``, or ``digits`` / ``minilm`` / ``mobilenet``), any task entry
``package.module:function``, or a local Hugging Face model folder (then the study uses
``lrsearch.tasks.hf:text_classification``). The task is built with the given kwargs and its model
inspected:

- **blocks**: the ``ModuleList`` / ``Sequential`` holding the most parameters in two or more
  children (BERT's ``encoder.layer``, MobileNet's ``features``), split in ``blocks`` contiguous
  groups, bottom to top;
- **head**: the task's ``info["head"]``, else the last module named like a head (``head``,
  ``classifier``, ``fc`` ...);
- **embeddings** (or ``stem``): what comes before the blocks; ``neck``: what comes after them and
  is not the head.

Each group is written as the fewest module paths that hold exactly its parameters, and the whole
file is read back with the study file reader and resolved on the model before it is returned, so
what ``init`` prints is what ``lrsearch run`` accepts.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lrsearch.errors import TaskError
from lrsearch.groups import matches, resolve_groups, trainable_names
from lrsearch.spec import StudySpec, group_ref_problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN: dict[str, str] = {
    "digits_transfer": "lrsearch.tasks.digits:digits_transfer",
    "rotten_tomatoes_minilm": "lrsearch.tasks.text:rotten_tomatoes_minilm",
    "fashion_mnist_mobilenet": "lrsearch.tasks.vision:fashion_mnist_mobilenet",
    "digits": "lrsearch.tasks.digits:digits_transfer",
    "minilm": "lrsearch.tasks.text:rotten_tomatoes_minilm",
    "mobilenet": "lrsearch.tasks.vision:fashion_mnist_mobilenet",
}
"""Built-in task names ``init`` takes as MODEL, and their entries."""

HF_ENTRY = "lrsearch.tasks.hf:text_classification"
HEAD_NAMES = ("head", "classifier", "fc", "lm_head", "score", "output", "out", "logits")
BACKBONE_LR = (1e-5, 3e-3)
HEAD_LR = (1e-4, 3e-2)
"""The suggested ranges: a fresh head learns from scratch and wants ~10x the pretrained layers."""

_BATCH_SIZE = 32
_EVALS_PER_EPOCH = 4
_MAX_TREE_LINES = 80


def resolve_model(model: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The task entry and kwargs that MODEL (a built-in name, an entry, an HF folder) stands for.

    Raises:
        TaskError: MODEL is none of these, or an HF folder comes without ``data``.
    """
    if model in BUILTIN:
        return BUILTIN[model], dict(kwargs)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TaskError(
                f"init: {model!r} is a folder without config.json, so not a Hugging Face model "
                "folder; give one written by save_pretrained, a built-in task or an entry"
            )
        if "data" not in kwargs:
            raise TaskError(
                f"init: a Hugging Face model folder needs its data: add -k data=FILE (a CSV, "
                f"JSONL or Parquet of texts and labels; see {HF_ENTRY})"
            )
        return HF_ENTRY, {"model": str(path), **kwargs}
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", model):
        return model, dict(kwargs)
    raise TaskError(
        f"init: MODEL {model!r} is not a built-in task ({', '.join(BUILTIN)}), a task entry "
        "'package.module:function' or a Hugging Face model folder"
    )


def study_text(
    model: str,
    kwargs: dict[str, Any] | None = None,
    *,
    blocks: int = 3,
    name: str | None = None,
    n_trials: int = 30,
) -> str:
    """A study file (TOML) for MODEL: its module tree as comments, groups, space and training.

    Args:
        model: A built-in task name, a task entry ``package.module:function``, or a local Hugging
            Face model folder.
        kwargs: The task's keyword arguments, written to ``[task] kwargs``.
        blocks: How many groups the repeated blocks are split into (fewer when there are fewer).
        name: The study name (default: from MODEL).
        n_trials: The study's budget.

    Raises:
        TaskError: MODEL cannot be resolved or its task not built.
    """
    from lrsearch.tasks import StagedTask, load_task

    if blocks < 1:
        raise TaskError(f"init: blocks must be >= 1, got {blocks}")
    entry, task_kwargs = resolve_model(model, dict(kwargs or {}))
    task = load_task(entry, task_kwargs)
    net = task.build_model()
    info = getattr(task, "info", None) or {}
    head = _head_path(net, info.get("head"))
    container = _blocks_container(net, head)
    groups = _suggest_groups(net, head, container, blocks)
    names = [g for g, _ in groups]
    block_names = [g for g in names if g not in ("embeddings", "stem", "neck", "head")]
    freeze = [g for g in names if g in ("embeddings", "stem")] + block_names[:-1]
    staged = isinstance(task, StagedTask) and bool(task.stages(net)) and task.deterministic_batches
    n_train = info.get("n_train")
    steps = (
        math.ceil(n_train / _BATCH_SIZE)
        if isinstance(n_train, int) and n_train > 0
        else sum(1 for _ in task.train_batches(_BATCH_SIZE, _generator()))
    )
    study_name = name or _slug(Path(model).name if Path(model).is_dir() else model.split(":")[-1])
    lines = [
        f"# A per-group learning-rate search for {model}, written by `lrsearch init`.",
        f"# Task {entry}; its model, by depth, with trainable parameters:",
        *_tree_lines(net, container),
        "# Groups: bottom to top; a fresh head learns from scratch, so its range sits above the",
        "# backbone's. Edit freely: `lrsearch create` checks the file without training.",
        "",
        "[study]",
        f"name = {_toml(study_name)}",
        f"n_trials = {n_trials}",
        "seed = 0",
        "",
        "[task]",
        f"entry = {_toml(entry)}",
        *([f"kwargs = {_toml(task_kwargs)}"] if task_kwargs else []),
        "",
        "[groups]",
        *(f"{g} = {_toml(list(p))}   # {_count(_group_size(net, p))}" for g, p in groups),
        "",
        "[space]",
        'kind = "per_group"',
        f"lr = {_toml(list(BACKBONE_LR))}",
        f"lr_ranges = {{ {'head' if 'head' in names else names[-1]} = {_toml(list(HEAD_LR))} }}",
    ]
    if freeze:
        lines += [
            f"freeze = {_toml(freeze)}",
            'freeze_mode = "prefix"   # freeze the lowest 0..n of them: a frozen prefix is cheaper',
        ]
    every = max(1, steps // _EVALS_PER_EPOCH)
    lines += [
        "",
        "[train]",
        'optimizer = "adamw"',
        "epochs = 1",
        f"batch_size = {_BATCH_SIZE}",
        'schedule = "warmup_cosine"',
        "warmup_ratio = 0.1",
        f"eval_every = {every}   # of {steps} steps per epoch; each evaluation a pruning point",
    ]
    if staged:
        lines.append("prefix_cache = true   # a frozen prefix runs once per study, not per trial")
    lines += [
        "",
        "[pruner]",
        'kind = "median"',
        "n_startup_trials = 5",
        "",
        "[sampler]",
        'kind = "tpe"',
        "n_startup_trials = 10",
        "",
    ]
    text = "\n".join(lines)
    _check(text, net)
    return text


def _generator() -> Any:
    import torch

    return torch.Generator().manual_seed(0)


def _check(text: str, model: nn.Module) -> None:
    """The study file reads back, and its groups resolve on the model (else a bug here)."""
    spec = StudySpec.from_dict(tomllib.loads(text), source="<init>")
    problems = group_ref_problems(spec.space, spec.groups.names)
    if problems:
        raise TaskError(f"init wrote a study file with problems (a bug): {'; '.join(problems)}")
    resolve_groups(model, spec.groups.patterns)


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _head_path(model: nn.Module, declared: object) -> str | None:
    """The head's module path: the task's ``info["head"]``, else the last head-named module."""
    paths = dict(model.named_modules())
    if isinstance(declared, str) and declared in paths and declared:
        return declared
    named = [
        p
        for p, m in paths.items()
        if p and p.rsplit(".", 1)[-1] in HEAD_NAMES and _param_count(m) > 0
    ]
    if named:
        return named[-1]
    top = [n for n, m in model.named_children() if _param_count(m) > 0]
    return top[-1] if len(top) > 1 else None


def _blocks_container(model: nn.Module, head: str | None) -> str | None:
    """The ModuleList / Sequential holding the most parameters in two or more children."""
    best: tuple[int, int, str] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [
            f"{path}.{n}" if path else n
            for n, c in module.named_children()
            if _param_count(c) > 0 and not _holds(f"{path}.{n}" if path else n, head)
        ]
        if len(children) < 2:
            continue
        size = sum(_param_count(model.get_submodule(c)) for c in children)
        key = (size, -path.count("."), path)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def _holds(path: str, inner: str | None) -> bool:
    """Whether module ``path`` is ``inner`` or an ancestor of it."""
    return inner is not None and (inner == path or inner.startswith(path + "."))


def _suggest_groups(
    model: nn.Module, head: str | None, container: str | None, k: int
) -> list[tuple[str, tuple[str, ...]]]:
    """Ordered ``(group, module paths)``: embeddings/stem, blocks in ``k`` groups, neck, head."""
    names = trainable_names(model)
    owner: dict[str, str] = {}
    order: list[str] = []
    blocks: list[str] = []
    if container is not None:
        module = model.get_submodule(container) if container else model
        blocks = [
            f"{container}.{n}" if container else n
            for n, c in module.named_children()
            if _param_count(c) > 0 and not _holds(f"{container}.{n}" if container else n, head)
        ]
    k = min(k, len(blocks)) if blocks else 0
    leaf = (container or "blocks").rsplit(".", 1)[-1]
    block_group: dict[str, str] = {}
    for j in range(k):
        members = blocks[j * len(blocks) // k : (j + 1) * len(blocks) // k]
        first, last = j * len(blocks) // k, (j + 1) * len(blocks) // k - 1
        label = f"{leaf}_{first}" if first == last else f"{leaf}_{first}_{last}"
        for b in members:
            block_group[b] = label
        order.append(label)
    first_block = next(
        (i for i, n in enumerate(names) if any(matches(n, b) for b in blocks)), len(names)
    )
    below = [n for n in names[:first_block] if not (head and matches(n, head))]
    embeds = any("embed" in n for n in below)
    pre = "body" if not blocks else "embeddings" if embeds else "stem"
    for i, n in enumerate(names):
        block = next((b for b in blocks if matches(n, b)), None)
        if head and matches(n, head):
            owner[n] = "head"
        elif block is not None:
            owner[n] = block_group[block]
        else:
            owner[n] = pre if i < first_block else "neck"
    used = set(owner.values())
    ordered = [g for g in [pre, *order, "neck", "head"] if g in used]
    return [(g, tuple(_paths_of(names, owner, g))) for g in ordered]


def _paths_of(names: Sequence[str], owner: dict[str, str], group: str) -> list[str]:
    """The fewest module paths (or parameter names) matching exactly ``group``'s parameters."""
    paths: list[str] = []
    for name in names:
        if owner[name] != group or any(matches(name, p) for p in paths):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if all(owner[n] == group for n in names if matches(n, prefix)):
                paths.append(prefix)
                break
    return paths


def _group_size(model: nn.Module, patterns: Sequence[str]) -> int:
    params = dict(model.named_parameters())
    return sum(
        p.numel()
        for n, p in params.items()
        if p.requires_grad and any(matches(n, pat) for pat in patterns)
    )


def _tree_lines(model: nn.Module, container: str | None) -> list[str]:
    """``#   path   count`` for every module with parameters, down to one level below the blocks."""
    limit = (container.count(".") + 2) if container else 2
    rows = [("(whole model)", _param_count(model))]
    for path, module in model.named_modules():
        depth = path.count(".") + 1 if path else 0
        count = _param_count(module) if path and depth <= limit else 0
        if count:
            rows.append((f"{'  ' * (depth - 1)}{path}", count))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"#   {label:<{width}}{_count(count):>8}" for label, count in rows]
    if len(lines) > _MAX_TREE_LINES:
        more = len(lines) - _MAX_TREE_LINES + 1
        lines = [*lines[: _MAX_TREE_LINES - 1], f"#   ... and {more} more"]
    return lines


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
    return f"{slug or 'study'}-per-group"


def _toml(value: Any) -> str:
    """``value`` as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != 0 and math.isfinite(value) and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"  # 3e-3, not 0.003
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TaskError(f"init: cannot write {value!r} ({type(value).__name__}) to a study file")


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def parse_kwarg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``: VALUE read as TOML (``3``, ``[1, 2]``), else a string.

    Raises:
        ValueError: No ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{text!r} must look like KEY=VALUE (n_train=200, data=reviews.csv)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value
