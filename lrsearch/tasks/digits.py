"""The quickstart task: fine-tune a small pretrained digit classifier to a new 5-way head.

Everything comes from ``sklearn.datasets.load_digits`` (1,797 8x8 images that ship inside
scikit-learn), so the task builds offline, in about a second (half of it pretraining).

- **Pretraining.** A third of the images of every digit (596 images, all ten digits) train a
  10-way MLP (``stem`` -> ``body`` -> ``head``) for 30 epochs, with 1 px jitter and Gaussian pixel
  noise as augmentation. It runs once per process and argument set (cached) and is deterministic:
  fixed seeds and explicit generators, the same weights bit for bit on a given torch build and
  thread count.
- **Fine-tuning.** Digits 5-9 (labels 0-4) from the other two thirds (599 images), seen through a
  "noisier camera": each image shifted by up to 1 px and noised once, for good. ``build_model``
  returns a copy of the pretrained ``stem`` and ``body`` under a fresh, seeded 5-way ``head``.
  The pretrained features are worth far more than a few hundred noisy labels can teach, and the
  fresh head must learn within a few dozen steps: the backbone wants a small rate (or none), the
  head a large one.

Measured with the defaults (200 train / 300 val images, hidden 256, noise 0.25), AdamW, batch 32,
3 epochs (21 steps), constant rates, value = last evaluation; mean of task seeds 0-2 x trial seeds
0-1 (sd 0.01-0.05 over those six runs, except 0.13 at 1e-4):

- one rate for every parameter: 1e-4 -> 0.36, 1e-3 -> 0.81 (best), 3e-3 -> 0.78, 1e-2 -> 0.72,
  3e-2 -> 0.56 (too high wrecks the backbone, too low leaves the head untrained);
- backbone frozen, head 1e-2 -> 0.86; backbone 1e-4, head 1e-2 -> 0.86;
- for scale: chance 0.20, the same MLP trained from scratch 0.49-0.51, a frozen random backbone
  under a trained head 0.3.

A trial of that size takes 0.03-0.1 s on 2 CPU cores, model building included.

**A held-out test split.** ``eval_split="test"`` scores the model on downstream images that
neither the training nor the validation split holds (by default every one left over: 99 with the
defaults), so a config chosen on validation accuracy can be judged out of sample: a search runs on
``eval_split="val"`` (the default), its winner is retrained on the same training images and
evaluated on ``"test"``. Only what ``val_batches`` yields changes; the training images, the model
and the random streams are the same in both.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks import TensorClassificationTask
from lrsearch.tasks._data import MAX_SEED, check_int

DOWNSTREAM_CLASSES: tuple[int, ...] = (5, 6, 7, 8, 9)
"""The digits of the fine-tuning task, labelled 0..4 in this order."""

_N_DIGITS = 10
_SIDE = 8  # images are 8x8
_PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16
_UPSTREAM_DIVISOR = 3  # a third of each digit's images pretrain; the rest are downstream
_SHIFT = 1  # jitter, in pixels
_PRETRAIN_LR = 5e-3
_PRETRAIN_BATCH = 128
# Offsets keep the streams of random numbers that one seed drives apart from each other.
_SPLIT_STREAM, _PRETRAIN_STREAM, _CAMERA_STREAM, _HEAD_STREAM = 0, 1, 2, 3

_STAGES = ("stem", "body.0", "body.1", "head")

_NAME = "digits_transfer"  # how its errors begin
_MAX_HIDDEN = 1024
_MAX_PRETRAIN_EPOCHS = 200
_MAX_NOISE = 2.0


class DigitsNet(nn.Module):
    """An MLP over flattened 8x8 images: ``stem`` (64 -> hidden), ``body`` (2 blocks), ``head``.

    Parameters: ``stem.0.{weight,bias}``, ``body.{0,1}.0.{weight,bias}``, ``head.{weight,bias}``.
    """

    def __init__(self, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(_SIDE * _SIDE, hidden), nn.ReLU())
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        )
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def digits_transfer(
    *,
    n_train: int = 200,
    n_val: int = 300,
    seed: int = 0,
    hidden: int = 256,
    noise: float = 0.25,
    pretrain_epochs: int = 30,
    n_test: int | None = None,
    eval_split: Literal["val", "test"] = "val",
) -> TensorClassificationTask:
    """The quickstart fine-tuning task: a pretrained digit MLP, a fresh head, digits 5-9.

    Args:
        n_train: Labelled downstream training images (balanced over the five digits).
        n_val: Held-out downstream validation images, disjoint from the training ones.
        seed: Seeds the split, pretraining, the downstream corruption and the fresh head.
        hidden: Width of the MLP's hidden layers.
        noise: Standard deviation of the Gaussian pixel noise (pixels scaled to 0..1) of the
            downstream images and of the pretraining augmentation; 0 keeps only the jitter.
        pretrain_epochs: Epochs of pretraining.
        n_test: Held-out test images, disjoint from the training and validation ones (the next
            stretch of the downstream images after them); default: all that are left.
        eval_split: ``"val"`` (default): ``val_batches`` yields the validation images, as a search
            needs. ``"test"``: it yields the test images instead, which no search has seen.

    Returns:
        A ``TensorClassificationTask`` scored by accuracy. ``info`` holds the classes and sizes,
        the module names, and ``pretrain_accuracy``: the pretrained 10-way model's accuracy on its
        own (jittered, noised) training images.

    Raises:
        TaskError: An argument is of the wrong type or out of its range.
    """
    check_int(_NAME, "seed", seed, 0, MAX_SEED)
    check_int(_NAME, "hidden", hidden, 1, _MAX_HIDDEN)
    check_int(_NAME, "pretrain_epochs", pretrain_epochs, 1, _MAX_PRETRAIN_EPOCHS)
    noise = _check_noise(noise)
    if eval_split not in ("val", "test"):
        raise TaskError(f"digits_transfer: eval_split must be 'val' or 'test', got {eval_split!r}")
    available = len(_downstream_order(seed))
    check_int(_NAME, "n_train", n_train, 1, available - 1, why=f"{available} downstream images")
    check_int(
        _NAME,
        "n_val",
        n_val,
        1,
        available - n_train,
        why=f"{available} downstream images, {n_train} of them for training",
    )
    left = available - n_train - n_val
    if n_test is not None or eval_split == "test":
        if left < 1:
            raise TaskError(
                f"digits_transfer: a test split needs images that neither training nor "
                f"validation holds, but n_train={n_train} and n_val={n_val} leave none of the "
                f"{available} downstream images; lower them"
            )
        n_test = left if n_test is None else n_test
        check_int(
            _NAME,
            "n_test",
            n_test,
            1,
            left,
            why=f"{available} downstream images, {n_train + n_val} for training and validation",
        )

    train_idx, val_idx = _downstream_split(seed, n_train, n_val)
    x, y = _digits()
    camera = torch.Generator().manual_seed(_stream(seed, _CAMERA_STREAM))
    x_train = _corrupt(x[train_idx], noise, camera)
    x_val = _corrupt(x[val_idx], noise, camera)
    y_train = y[train_idx] - DOWNSTREAM_CLASSES[0]
    y_val = y[val_idx] - DOWNSTREAM_CLASSES[0]
    if eval_split == "test" and n_test is not None:
        test_idx = _downstream_test(seed, n_train, n_val, n_test)
        # Drawn after the training and validation images from the same stream: those stay
        # bit-identical to eval_split="val".
        x_val = _corrupt(x[test_idx], noise, camera)
        y_val = y[test_idx] - DOWNSTREAM_CLASSES[0]

    # Pretrain now, not in the first trial, so that trials cost the same and info is complete.
    _, pretrain_accuracy = _pretrained(hidden, noise, pretrain_epochs, seed)
    info: dict[str, Any] = {
        "classes": list(DOWNSTREAM_CLASSES),
        "n_classes": len(DOWNSTREAM_CLASSES),
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "eval_split": eval_split,
        "n_available": available,
        "n_pretrain": len(_upstream_indices(seed)),
        "pretrain_classes": list(range(_N_DIGITS)),
        "pretrain_epochs": pretrain_epochs,
        "pretrain_accuracy": pretrain_accuracy,
        "hidden": hidden,
        "noise": noise,
        "jitter_px": _SHIFT,
        "modules": ["stem", "body", "head"],
        "backbone": ["stem", "body"],
        "head": "head",
        "chance_accuracy": 1 / len(DOWNSTREAM_CLASSES),
    }
    return TensorClassificationTask(
        model_fn=functools.partial(_build_model, hidden, noise, pretrain_epochs, seed),
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        info=info,
        # DigitsNet's forward is these four applied in turn: a frozen prefix of them can run
        # without autograd, and its outputs can be cached (lrsearch.training.prefix).
        stage_paths=_STAGES,
    )


def _check_noise(value: object) -> float:
    """``value`` as a float, or ``TaskError`` unless it is a number in ``[0, _MAX_NOISE]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(
            f"digits_transfer: noise must be a number in [0, {_MAX_NOISE}], got {value!r}"
        )
    if not (math.isfinite(value) and 0 <= value <= _MAX_NOISE):
        raise TaskError(
            f"digits_transfer: noise={value} is out of range; it must be in [0, {_MAX_NOISE}]"
        )
    return float(value)


def _stream(seed: int, stream: int) -> int:
    """A seed for one stream of random numbers; distinct streams never share a seed."""
    return seed * 4 + stream


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images flattened and scaled to 0..1, and their digits; callers must not mutate."""
    from sklearn.datasets import load_digits  # sklearn is slow to import; only this task needs it

    data = load_digits()
    x = torch.tensor(data.data / _PIXEL_MAX, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


@functools.cache
def _split(seed: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The pretraining indices, and each downstream digit's own indices in a seeded order."""
    _, y = _digits()
    generator = torch.Generator().manual_seed(_stream(seed, _SPLIT_STREAM))
    upstream: list[torch.Tensor] = []
    downstream: list[torch.Tensor] = []
    for digit in range(_N_DIGITS):
        idx = (y == digit).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cut = len(idx) // _UPSTREAM_DIVISOR
        upstream.append(idx[:cut])
        if digit in DOWNSTREAM_CLASSES:
            downstream.append(idx[cut:])
    return torch.cat(upstream), tuple(downstream)


def _upstream_indices(seed: int) -> torch.Tensor:
    """Indices of the pretraining images (every digit)."""
    return _split(seed)[0]


def _downstream_order(seed: int) -> torch.Tensor:
    """Indices of the downstream images, dealt round-robin over the digits.

    Any prefix is balanced over the five digits (to within one image), so a small training set
    never misses a digit; the validation set is the next stretch.
    """
    per_digit = _split(seed)[1]
    idx = torch.cat(per_digit)
    rank = torch.cat([torch.arange(len(p)) for p in per_digit])
    digit = torch.cat([torch.full((len(p),), i) for i, p in enumerate(per_digit)])
    return idx[torch.argsort(rank * len(per_digit) + digit)]


def _downstream_split(seed: int, n_train: int, n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into ``load_digits`` order) of the downstream training and validation images."""
    order = _downstream_order(seed)
    return order[:n_train], order[n_train : n_train + n_val]


def _downstream_test(seed: int, n_train: int, n_val: int, n_test: int) -> torch.Tensor:
    """Indices of the downstream test images: the stretch after the validation images."""
    start = n_train + n_val
    return _downstream_order(seed)[start : start + n_test]


def _corrupt(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` (flattened images) each shifted by up to ``_SHIFT`` px and with Gaussian noise."""
    n = len(x)
    padded = F.pad(x.view(n, _SIDE, _SIDE), (_SHIFT,) * 4)
    windows = padded.unfold(1, _SIDE, 1).unfold(2, _SIDE, 1)  # (n, 2s+1, 2s+1, 8, 8)
    dy = torch.randint(0, 2 * _SHIFT + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * _SHIFT + 1, (n,), generator=generator)
    out = windows[torch.arange(n), dy, dx].reshape(n, _SIDE * _SIDE)
    if noise:
        out = out + noise * torch.randn(out.shape, generator=generator)
    return out


def _new_model(n_classes: int, hidden: int, seed: int) -> DigitsNet:
    """A randomly initialised ``DigitsNet``, seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsNet(hidden, n_classes)


@functools.cache
def _pretrained(
    hidden: int, noise: float, epochs: int, seed: int
) -> tuple[dict[str, torch.Tensor], float]:
    """The pretrained 10-way model's state and its accuracy on its (augmented) training images.

    Cached: later calls return the same state, which callers copy and must not mutate.
    """
    x, y = _digits()
    upstream = _upstream_indices(seed)
    x_up, y_up = x[upstream], y[upstream]
    model = _new_model(_N_DIGITS, hidden, _stream(seed, _PRETRAIN_STREAM))
    generator = torch.Generator().manual_seed(_stream(seed, _PRETRAIN_STREAM))
    optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN_LR)
    model.train()
    # The caller may sit under no_grad (an evaluation loop); pretraining needs gradients anyway.
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x_up), generator=generator)
            for start in range(0, len(order), _PRETRAIN_BATCH):
                idx = order[start : start + _PRETRAIN_BATCH]
                # Fresh jitter and noise every time: the backbone learns to ignore both.
                loss = F.cross_entropy(model(_corrupt(x_up[idx], noise, generator)), y_up[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(_corrupt(x_up, noise, generator))
        accuracy = float((logits.argmax(dim=-1) == y_up).float().mean())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, accuracy


def _build_model(hidden: int, noise: float, pretrain_epochs: int, seed: int) -> DigitsNet:
    """A fresh copy of the pretrained backbone under a fresh, seeded 5-way head."""
    state, _ = _pretrained(hidden, noise, pretrain_epochs, seed)
    # The same head for every call: trials then differ only in their rates and data order.
    model = _new_model(len(DOWNSTREAM_CLASSES), hidden, _stream(seed, _HEAD_STREAM))
    backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
    head = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    model.load_state_dict({**backbone, **head})  # strict: every other key must match
    return model
