"""A no-code task: your image classifier on a folder of class sub-folders, or on arrays.

``entry = "lrsearch.tasks.images:image_classification"`` with ``kwargs = { data = "photos",
model = "mypackage.models:resnet_small" }`` searches per-group rates with no Python of your own
beyond the model.

- **Data.** A folder of class sub-folders of images (``photos/cat/1.png``, ``photos/dog/7.jpg``;
  read with Pillow, hidden files skipped); a folder whose sub-folders are ``train``, ``val`` (or
  ``validation``) and ``test``, each of class sub-folders (the splits given); a ``.npz`` with an
  array of images and one of labels; or a Parquet file with an image column (encoded image bytes,
  or a Hugging Face ``{"bytes": ...}`` struct, or nested arrays) and a label column.
  ``image_column`` / ``label_column`` name the arrays or columns (default ``image`` and
  ``label``). Arrays may be ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``; ``uint8`` is
  scaled to [0, 1], floats are taken as [0, 1] already.
- **Preparation.** Every image is converted to ``channels`` (3: RGB, the default; 1: gray),
  resized to ``image_size`` x ``image_size`` (bilinear; default 224) and normalised with ``mean``
  and ``std`` (default ImageNet's), once per process and argument set, held in memory as float32.
  No augmentation, so the prefix cache applies.
- **Model.** ``"package.module:factory"``, imported and called with ``model_kwargs``, plus
  ``num_classes`` when it takes that argument; or a TorchScript file (``torch.jit.save``). Each
  trial builds it afresh under the same seed, so every trial starts from the same weights. It must
  map ``(batch, channels, image_size, image_size)`` to ``(batch, n_classes)`` logits: checked once.
- **Stages.** ``stages``: module paths of the model whose chain is its forward (an
  ``nn.Sequential``'s children are taken by default). Checked on two images; they give the task the
  ``StagedTask`` capability, so a frozen prefix runs without autograd and
  ``[train] prefix_cache = true`` applies.
- **Labels and splits** as in ``lrsearch.tasks.hf``: class names are the sub-folders (or label
  values), sorted unless ``labels`` gives the order; splits made by ``seed`` and fractions, or
  given (split folders, ``split_column``, ``val_data`` / ``test_data``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks._data import (
    EVAL_SPLITS,
    MAX_SEED,
    SPLIT_ALIASES,
    SPLITS,
    LabelMap,
    check_choice,
    check_fraction,
    check_int,
    check_nonempty,
    existing_path,
    plain,
    read_table,
    split_column_rows,
    split_rows,
)
from lrsearch.tasks.vision import IMAGENET_MEAN, IMAGENET_STD, ImageTensorTask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_NAME = "image_classification"
_MODEL_STREAM = 1  # the model's seed is derived from the split's, never equal to it


def image_classification(
    *,
    data: str,
    model: str,
    model_kwargs: dict[str, Any] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    labels: list[Any] | None = None,
    val_data: str | None = None,
    test_data: str | None = None,
    split_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int = 224,
    channels: int = 3,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stages: list[str] | None = None,
    seed: int = 0,
    eval_split: str = "val",
) -> ImageTensorTask:
    """Images from a folder or a file, classified by the model you name.

    Args:
        data: A folder of class sub-folders (or of ``train``/``val``/``test`` folders of them), a
            ``.npz`` or a Parquet file.
        model: ``"package.module:factory"`` or the path of a TorchScript file.
        model_kwargs: Keyword arguments of the factory (``num_classes`` is added when it takes it).
        image_column, label_column: Array names (npz) or columns (Parquet).
        labels: The class names in id order (default: sorted).
        val_data, test_data: Separate sources for those splits (then ``data`` is training only).
        split_column: A Parquet column naming each row's split.
        val_fraction, test_fraction: Shares of ``data`` for the made splits, in [0, 1).
        image_size: Side in pixels every image is resized to (default 224).
        channels: 3 (RGB, default) or 1 (gray).
        mean, std: Per-channel normalisation (default ImageNet's; one value per channel).
        stages: Module paths whose chain is the model's forward (default: an ``nn.Sequential``'s
            children; else none).
        seed: Shuffles the made splits and seeds the model's initialisation.
        eval_split: ``"val"`` (the search), or ``"test"`` to score a winner on held-out images.

    Returns:
        A task scored by accuracy; ``info`` holds the classes, split sizes and the stages.

    Raises:
        TaskError: A bad argument, path, column or label, an empty split, a model that cannot be
            built or gives the wrong output; one message naming the problem and the fix.
    """
    check_int(_NAME, "seed", seed, 0, MAX_SEED)
    check_int(_NAME, "image_size", image_size, 1, 4096)
    check_int(_NAME, "channels", channels, 1, 3)
    if channels == 2:
        raise TaskError(f"{_NAME}: channels must be 1 (gray) or 3 (RGB), got 2")
    check_choice(_NAME, "eval_split", eval_split, EVAL_SPLITS)
    norm_mean = _per_channel("mean", mean, IMAGENET_MEAN, channels)
    norm_std = _per_channel("std", std, IMAGENET_STD, channels)
    if any(s <= 0 for s in norm_std):
        raise TaskError(f"{_NAME}: std must be > 0 for every channel, got {list(norm_std)}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TaskError(f"{_NAME}: model_kwargs must be a table, got {model_kwargs!r}")
    factory = _model_factory(model)
    images, values = _read_splits(
        data,
        image_column=image_column,
        label_column=label_column,
        val_data=val_data,
        test_data=test_data,
        split_column=split_column,
        val_fraction=check_fraction(_NAME, "val_fraction", val_fraction),
        test_fraction=check_fraction(_NAME, "test_fraction", test_fraction),
        seed=seed,
    )
    check_nonempty(_NAME, {s: len(v) for s, v in values.items()}, eval_split=eval_split)
    label_map = LabelMap.build(_NAME, [v for s in SPLITS for v in values[s]], labels)
    prepared = {
        s: _prepare(images[s], image_size, channels, norm_mean, norm_std)
        for s in ("train", eval_split)
    }
    y = {s: label_map.ids(_NAME, values[s], f"the {s} split") for s in SPLITS}
    n_classes = len(label_map.classes)
    model_fn = functools.partial(
        _build_model, factory, dict(model_kwargs or {}), n_classes, seed * 2 + _MODEL_STREAM
    )
    probe = prepared[eval_split][:2]
    built = _checked_model(model_fn, probe, n_classes)
    stage_paths = _checked_stages(built, stages, probe)
    info: dict[str, Any] = {
        "labels": list(label_map.classes),
        "classes": list(label_map.classes),
        "n_classes": n_classes,
        **{f"n_{s}": len(values[s]) for s in SPLITS},
        "eval_split": eval_split,
        "image_size": image_size,
        "channels": channels,
        "mean": list(norm_mean),
        "std": list(norm_std),
        "model": str(model),
        "stages": list(stage_paths),
        "n_params": sum(p.numel() for p in built.parameters() if p.requires_grad),
        "chance_accuracy": 1 / n_classes,
    }
    return ImageTensorTask(
        model_fn=model_fn,
        x_train=prepared["train"],
        y_train=y["train"],
        x_val=prepared[eval_split],
        y_val=y[eval_split],
        info=info,
        stage_paths=tuple(stage_paths),
    )


def _per_channel(
    name: str, value: object, default: Sequence[float], channels: int
) -> tuple[float, ...]:
    if value is None:
        chosen = tuple(default) if channels == 3 else (sum(default) / len(default),)
        return tuple(float(v) for v in chosen)
    numbers = (
        [float(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if isinstance(value, list)
        else []
    )
    if not isinstance(value, list) or len(numbers) != len(value) or len(value) != channels:
        raise TaskError(
            f"{_NAME}: {name} must be a list of {channels} number(s), one per channel, "
            f"got {value!r}"
        )
    return tuple(numbers)


# --- the model -------------------------------------------------------------------------------


def _model_factory(model: object) -> Callable[..., nn.Module]:
    """A callable building the model: an imported factory, or a TorchScript file's loader."""
    if not isinstance(model, str) or not model:
        raise TaskError(
            f"{_NAME}: model must be 'package.module:factory' or a TorchScript file, got {model!r}"
        )
    path = Path(model).expanduser()
    if path.is_file():
        try:
            raw = path.read_bytes()
            _load_script(raw)
        except Exception as e:
            raise TaskError(
                f"{_NAME}: model {model!r} is not a TorchScript file ({e}); save it with "
                "torch.jit.save, or name a factory as 'package.module:factory'"
            ) from e

        return functools.partial(_load_script, raw)
    module_name, sep, attr = model.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(
            f"{_NAME}: model {model!r} is neither a file nor 'package.module:factory'; fix the "
            "path or the name"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(
            f"{_NAME}: cannot import {module_name!r} of model {model!r}: {e}; install it or put "
            "it on PYTHONPATH"
        ) from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"{_NAME}: module {module_name!r} has no callable {attr!r}; fix model")
    return factory


def _load_script(raw: bytes) -> nn.Module:
    """A TorchScript module from its file's bytes (torch 2.x deprecates TorchScript: quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module: nn.Module = torch.jit.load(io.BytesIO(raw), map_location="cpu")
    return module


def _takes_num_classes(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _build_model(
    factory: Callable[..., nn.Module], kwargs: dict[str, Any], n_classes: int, seed: int
) -> nn.Module:
    """The model, built under a fixed seed: every trial starts from the same weights."""
    if _takes_num_classes(factory):
        kwargs = {"num_classes": n_classes, **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(**kwargs)
    return model.float().train()


def _checked_model(
    model_fn: Callable[[], nn.Module], probe: torch.Tensor, n_classes: int
) -> nn.Module:
    try:
        model = model_fn()
    except TaskError:
        raise
    except Exception as e:  # the user's factory: any error is theirs, reported in one line
        raise TaskError(f"{_NAME}: building the model failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise TaskError(f"{_NAME}: the model factory returned {type(model).__name__}, not a module")
    try:
        with torch.no_grad():
            out = model.eval()(probe)
    except Exception as e:
        raise TaskError(
            f"{_NAME}: the model cannot take images of shape {tuple(probe.shape[1:])}: "
            f"{type(e).__name__}: {e}; check image_size and channels"
        ) from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(probe), n_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(
            f"{_NAME}: the model gives {shape} for {len(probe)} images; it must give "
            f"({len(probe)}, {n_classes}) logits, one per class (factory argument num_classes)"
        )
    return model


def _checked_stages(model: nn.Module, stages: object, probe: torch.Tensor) -> list[str]:
    """The stage paths, checked to chain to the model's output; ``[]`` when there are none."""
    if stages is None:
        if type(model) is not nn.Sequential:
            return []
        paths = [name for name, _ in model.named_children()]
    elif isinstance(stages, list) and all(isinstance(s, str) and s for s in stages):
        paths = list(stages)
    else:
        raise TaskError(f"{_NAME}: stages must be a list of module paths, got {stages!r}")
    missing = []
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            missing.append(path)
    if missing:
        raise TaskError(
            f"{_NAME}: stages {missing} are not modules of the model; its top modules are "
            f"{[n for n, _ in model.named_children()]}"
        )
    try:
        with torch.no_grad():
            x = probe
            for path in paths:
                x = model.get_submodule(path)(x)
            chained = torch.allclose(x, model.eval()(probe), atol=1e-5, rtol=1e-4)
    except Exception:
        chained = False
    if not chained:
        if stages is None:
            return []
        raise TaskError(
            f"{_NAME}: the stages {paths} applied one after another do not give the model's "
            "output; list modules whose chain is the forward (or leave stages out)"
        )
    return paths


# --- the data --------------------------------------------------------------------------------


Images = list[np.ndarray]


def _read_splits(
    data: object,
    *,
    image_column: str,
    label_column: str,
    val_data: object,
    test_data: object,
    split_column: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, Images], dict[str, list[Any]]]:
    """Images (HxWxC or HxW arrays) and raw label values of each split."""
    columns = (image_column, label_column)
    source = existing_path(_NAME, "data", data)
    given_folders = _split_folders(source)
    if given_folders:
        if val_data is not None or test_data is not None or split_column is not None:
            raise TaskError(
                f"{_NAME}: {source} holds split folders; drop val_data/test_data/split_column"
            )
        read = {s: _read_folder(p) for s, p in given_folders.items()}
        return (
            {s: read[s][0] if s in read else [] for s in SPLITS},
            {s: read[s][1] if s in read else [] for s in SPLITS},
        )
    whole, whole_values, split_values = _read_source(source, "data", columns, split_column)
    extra = {
        s: _read_source(existing_path(_NAME, f"{s}_data", p), f"{s}_data", columns, None)
        for s, p in (("val", val_data), ("test", test_data))
        if p is not None
    }
    if split_column is not None and extra:
        raise TaskError(f"{_NAME}: give split_column or val_data/test_data, not both")
    if split_values is not None:
        rows = split_column_rows(_NAME, split_values, str(split_column))
    elif extra:
        rows = {"train": torch.arange(len(whole))}
    else:
        rows = split_rows(
            _NAME, len(whole), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
    images: dict[str, Images] = {}
    values: dict[str, list[Any]] = {}
    for split in SPLITS:
        if split in rows:
            idx = rows[split].tolist()
            images[split] = [whole[i] for i in idx]
            values[split] = [whole_values[i] for i in idx]
        elif split in extra:
            images[split], values[split] = extra[split][0], extra[split][1]
        else:
            images[split], values[split] = [], []
    return images, values


def _split_folders(folder: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``folder``'s sub-folders are split names including ``train``."""
    if not folder.is_dir():
        return {}
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = {p: SPLIT_ALIASES.get(p.name.lower()) for p in subs}
    if not subs or None in names.values() or "train" not in names.values():
        return {}
    return {split: p for p, split in names.items() if split is not None}


def _read_source(
    source: Path, name: str, columns: tuple[str, str], split_column: str | None
) -> tuple[Images, list[Any], list[Any] | None]:
    """Images, label values and (with ``split_column``) split values of one folder or file."""
    if source.is_dir():
        if split_column is not None:
            raise TaskError(f"{_NAME}: split_column applies to a Parquet file, not a folder")
        images, values = _read_folder(source)
        return images, values, None
    suffix = source.suffix.lower()
    if suffix == ".npz":
        if split_column is not None:
            raise TaskError(f"{_NAME}: split_column applies to a Parquet file, not an npz")
        return (*_read_npz(source, name, columns), None)
    if suffix in (".parquet", ".pq"):
        cols = [*columns, *([split_column] if split_column else [])]
        frame = read_table(_NAME, name, source, cols)
        images = [_cell_image(v, source, i) for i, v in enumerate(frame[columns[0]].tolist())]
        values = [plain(v) for v in frame[columns[1]].tolist()]
        splits = frame[split_column].tolist() if split_column else None
        return images, values, splits
    raise TaskError(
        f"{_NAME}: {name} {str(source)!r} must be a folder of class sub-folders, a .npz or a "
        ".parquet file"
    )


def _read_folder(folder: Path) -> tuple[Images, list[Any]]:
    from PIL import Image  # only this task reads image files

    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TaskError(
            f"{_NAME}: {folder} has no class sub-folders; put each class's images in a folder "
            "named after it (photos/cat/1.png)"
        )
    images: Images = []
    values: list[Any] = []
    for class_dir in classes:
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        for path in files:
            try:
                with Image.open(path) as img:
                    images.append(np.asarray(img.convert("RGB")))
            except Exception as e:  # Pillow raises several kinds for a broken file
                raise TaskError(f"{_NAME}: cannot read image {path}: {e}") from e
            values.append(class_dir.name)
    if not images:
        raise TaskError(
            f"{_NAME}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {folder}"
        )
    return images, values


def _read_npz(path: Path, name: str, columns: tuple[str, str]) -> tuple[Images, list[Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [c for c in columns if c not in archive.files]
            if missing:
                raise TaskError(
                    f"{_NAME}: {name} {str(path)!r} has no array {', '.join(map(repr, missing))}; "
                    f"its arrays are {', '.join(archive.files)} (set image_column/label_column)"
                )
            x, y = archive[columns[0]], archive[columns[1]]
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"{_NAME}: cannot read {name} {str(path)!r}: {e}") from e
    if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
        raise TaskError(
            f"{_NAME}: {path} must hold images (n, H, W[, C]) or (n, C, H, W) and labels (n,), "
            f"got {x.shape} and {y.shape}"
        )
    return [np.asarray(img) for img in x], [plain(v) for v in y]


def _cell_image(value: Any, source: Path, row: int) -> np.ndarray:
    """One Parquet cell as an image array: encoded bytes, ``{"bytes": ...}``, or nested arrays."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as img:
                return np.asarray(img.convert("RGB"))
        except Exception as e:
            raise TaskError(f"{_NAME}: row {row} of {source} is not a readable image: {e}") from e
    try:
        return np.stack([np.stack(list(r)) if hasattr(r, "__len__") else r for r in value])
    except Exception as e:
        raise TaskError(
            f"{_NAME}: row {row} of {source} holds {type(value).__name__}; an image column holds "
            "encoded image bytes or nested arrays"
        ) from e


def _prepare(
    images: Images,
    size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """Arrays -> float ``(n, channels, size, size)``: [0, 1], resized, normalised."""
    out = torch.empty((len(images), channels, size, size), dtype=torch.float32)
    for i, img in enumerate(images):
        x = torch.from_numpy(np.array(img))  # a copy: Pillow's arrays are read-only
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if x.ndim == 2:
            x = x.unsqueeze(0)
        elif x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
            x = x.permute(2, 0, 1)  # HWC -> CHW
        x = x[:3]  # an alpha channel carries no class
        if x.shape[0] != channels:
            x = x.mean(dim=0, keepdim=True) if channels == 1 else x[:1].expand(3, -1, -1)
        if tuple(x.shape[1:]) != (size, size):
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        out[i] = x
    m = torch.tensor(mean).view(1, channels, 1, 1)
    s = torch.tensor(std).view(1, channels, 1, 1)
    return (out - m) / s
