"""The search space: trials in, per-group learning rates out."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

from lrsearch.errors import SpecError
from lrsearch.space import Sample, SearchSpace
from lrsearch.spec import SpaceSection

GROUPS = ("emb", "low", "high", "head")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ask(
    space: SearchSpace, *, seed: int = 0, enqueue: dict[str, Any] | None = None
) -> tuple[optuna.Trial, Sample]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    if enqueue is not None:
        study.enqueue_trial(enqueue)
    trial = study.ask()
    return trial, space.sample(trial)


def test_per_group_samples_every_group_log_uniform_in_range() -> None:
    space = SearchSpace(
        SpaceSection(lr=(1e-5, 1e-2), lr_ranges={"head": (1e-3, 1.0), "he*": (5.0, 6.0)}), GROUPS
    )
    for seed in range(20):
        trial, sample = ask(space, seed=seed)
        assert list(sample.lrs) == list(GROUPS)
        assert set(trial.params) == {f"lr.{g}" for g in GROUPS}
        for g in GROUPS:
            # The first matching lr_ranges entry wins: "head" before "he*".
            low, high = (1e-3, 1.0) if g == "head" else (1e-5, 1e-2)
            assert trial.distributions[f"lr.{g}"] == FloatDistribution(low, high, log=True)
            assert low <= sample.lrs[g] <= high
            assert sample.lrs[g] == trial.params[f"lr.{g}"]
        assert sample.weight_decay is None
        assert sample.frozen == ()


def test_per_group_lr_ranges_by_glob() -> None:
    space = SearchSpace(SpaceSection(lr_ranges={"*": (2e-4, 3e-4)}), GROUPS)
    trial, sample = ask(space)
    assert all(2e-4 <= lr <= 3e-4 for lr in sample.lrs.values())
    assert set(trial.distributions.values()) == {FloatDistribution(2e-4, 3e-4, log=True)}


def test_per_group_with_fixed_trial() -> None:
    params = {"lr.emb": 1e-5, "lr.low": 2e-5, "lr.high": 3e-4, "lr.head": 1e-2}
    sample = SearchSpace(SpaceSection(), GROUPS).sample(FixedTrial(params))
    assert sample.lrs == {"emb": 1e-5, "low": 2e-5, "high": 3e-4, "head": 1e-2}


@pytest.mark.parametrize(
    ("choice", "expected_params"),
    [
        (True, {"freeze.emb", "freeze.low", "lr.high", "lr.head"}),
        (False, {"freeze.emb", "freeze.low", "lr.emb", "lr.low", "lr.high", "lr.head"}),
    ],
)
def test_freezable_groups_sample_the_choice(choice: bool, expected_params: set[str]) -> None:
    space = SearchSpace(SpaceSection(freeze=("emb", "low")), GROUPS)
    trial, sample = ask(space, enqueue={"freeze.emb": choice, "freeze.low": choice})
    assert set(trial.params) == expected_params
    assert trial.distributions["freeze.emb"] == CategoricalDistribution([False, True])
    assert (sample.lrs["emb"] == 0.0) is choice
    assert (sample.lrs["low"] == 0.0) is choice
    assert sample.lrs["high"] > 0 and sample.lrs["head"] > 0
    assert sample.frozen == (("emb", "low") if choice else ())


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_prefix_mode_freezes_the_lowest_groups_first(depth: int) -> None:
    space = SearchSpace(SpaceSection(freeze=("high", "e*", "low"), freeze_mode="prefix"), GROUPS)
    trial, sample = ask(space, enqueue={"freeze_depth": depth})
    # One ordered choice, not a coin per group: the order is the groups', not freeze's.
    assert trial.distributions["freeze_depth"] == IntDistribution(0, 3)
    assert not any(name.startswith("freeze.") for name in trial.params)
    assert sample.frozen == ("emb", "low", "high")[:depth]
    assert set(trial.params) == {"freeze_depth"} | {f"lr.{g}" for g in GROUPS[depth:]}


def test_prefix_mode_may_start_above_a_group_fixed_at_zero() -> None:
    space = SearchSpace(
        SpaceSection(freeze=("low", "high"), freeze_mode="prefix", fixed={"emb": 0.0}), GROUPS
    )
    params = {"freeze_depth": 1, "lr.high": 1e-3, "lr.head": 1e-2}
    sample = space.sample(FixedTrial(params))
    assert sample.lrs == {"emb": 0.0, "low": 0.0, "high": 1e-3, "head": 1e-2}


def test_prefix_mode_with_a_gap_names_the_group() -> None:
    # Auto-depth groups are known only when the model is: SearchSpace checks them again.
    with pytest.raises(SpecError, match=r"low lies below 'high' and may not be frozen"):
        SearchSpace(SpaceSection(freeze=("emb", "high"), freeze_mode="prefix"), GROUPS)


def test_prefix_mode_counts_a_fixed_group_as_fixed_even_inside_a_freeze_glob() -> None:
    # emb is fixed at a rate, so it trains in every trial: freezing low above it is no prefix.
    space = SpaceSection(freeze=("e*", "low", "high"), freeze_mode="prefix", fixed={"emb": 1e-3})
    with pytest.raises(SpecError, match=r"emb lies below 'high' and may not be frozen"):
        SearchSpace(space, GROUPS)
    at_zero = replace(space, fixed={"emb": 0.0})
    params = {"freeze_depth": 1, "lr.high": 1e-3, "lr.head": 1e-2}
    assert SearchSpace(at_zero, GROUPS).sample(FixedTrial(params)).frozen == ("emb", "low")


def test_frozen_group_with_fixed_trial_needs_no_lr() -> None:
    space = SearchSpace(SpaceSection(freeze=("emb",)), GROUPS)
    # FixedTrial raises on a missing parameter: this also proves lr.emb is not asked for.
    params = {"freeze.emb": True, "lr.low": 1e-4, "lr.high": 1e-3, "lr.head": 1e-2}
    sample = space.sample(FixedTrial(params))
    assert sample.lrs == {"emb": 0.0, "low": 1e-4, "high": 1e-3, "head": 1e-2}
    assert sample.frozen == ("emb",)


def test_fixed_groups_sample_nothing() -> None:
    space = SearchSpace(
        SpaceSection(freeze=("e*",), fixed={"low": 0.0, "h*": 1e-3}, lr_ranges={"head": (1, 2)}),
        GROUPS,
    )
    trial, sample = ask(space, enqueue={"freeze.emb": False})
    assert set(trial.params) == {"freeze.emb", "lr.emb"}
    assert sample.lrs["low"] == 0.0
    assert sample.lrs["high"] == sample.lrs["head"] == 1e-3
    assert sample.frozen == ("low",)


@pytest.mark.parametrize(
    ("weight_decay", "fixed_value"),
    [(None, None), (0.0, 0.0), (0.05, 0.05), ((1e-4, 1e-2), None)],
)
def test_weight_decay_fixed_or_searched(
    weight_decay: float | tuple[float, float] | None, fixed_value: float | None
) -> None:
    space = SearchSpace(SpaceSection(weight_decay=weight_decay), GROUPS)
    trial, sample = ask(space)
    if isinstance(weight_decay, tuple):
        assert trial.distributions["weight_decay"] == FloatDistribution(*weight_decay, log=True)
        assert sample.weight_decay is not None
        assert sample.weight_decay == trial.params["weight_decay"]
        assert weight_decay[0] <= sample.weight_decay <= weight_decay[1]
    else:
        assert "weight_decay" not in trial.params
        assert sample.weight_decay == fixed_value


@pytest.mark.parametrize(
    ("groups", "head", "params", "expected"),
    [
        (
            ("a", "b", "c", "head"),
            ("head",),
            {"base_lr": 1e-3, "decay": 0.5, "head_multiplier": 10.0},
            {"a": 2.5e-4, "b": 5e-4, "c": 1e-3, "head": 1e-2},
        ),
        (
            # Head groups may sit anywhere in the file; the decay counts only the others.
            ("pool", "a", "b", "cls"),
            ("pool", "cls"),
            {"base_lr": 2e-3, "decay": 0.8, "head_multiplier": 3.0},
            {"pool": 6e-3, "a": 1.6e-3, "b": 2e-3, "cls": 6e-3},
        ),
        (
            ("l0", "l1", "l2", "l3", "l4"),
            (),
            {"base_lr": 1e-2, "decay": 0.9},
            {"l0": 1e-2 * 0.9**4, "l1": 1e-2 * 0.9**3, "l2": 1e-2 * 0.81, "l3": 9e-3, "l4": 1e-2},
        ),
        (
            ("only", "head"),
            ("h*",),
            {"base_lr": 1e-4, "decay": 0.7, "head_multiplier": 1.0},
            {"only": 1e-4, "head": 1e-4},
        ),
    ],
)
def test_layer_decay(
    groups: tuple[str, ...],
    head: tuple[str, ...],
    params: dict[str, float],
    expected: dict[str, float],
) -> None:
    space = SearchSpace(SpaceSection(kind="layer_decay", head=head), groups)
    # FixedTrial raises on any parameter not given: so no head_multiplier without head groups.
    sample = space.sample(FixedTrial(params))
    assert list(sample.lrs) == list(groups)
    for g, lr in expected.items():
        assert math.isclose(sample.lrs[g], lr, rel_tol=1e-12), g


def test_layer_decay_distributions() -> None:
    spec = SpaceSection(
        kind="layer_decay",
        lr=(1e-5, 1e-2),
        decay=(0.6, 0.95),
        head=("head",),
        head_multiplier=(2.0, 20.0),
    )
    for seed in range(10):
        trial, sample = ask(SearchSpace(spec, GROUPS), seed=seed)
        assert trial.distributions == {
            "base_lr": FloatDistribution(1e-5, 1e-2, log=True),
            "decay": FloatDistribution(0.6, 0.95),
            "head_multiplier": FloatDistribution(2.0, 20.0, log=True),
        }
        base, decay = trial.params["base_lr"], trial.params["decay"]
        assert sample.lrs["high"] == base
        assert math.isclose(sample.lrs["emb"], base * decay**2)
        assert math.isclose(sample.lrs["head"], base * trial.params["head_multiplier"])
        # Each layer below learns no faster than the one above.
        assert sample.lrs["emb"] <= sample.lrs["low"] <= sample.lrs["high"]


def test_layer_decay_with_glob_freeze_and_fixed() -> None:
    groups = ("layer0", "layer1", "layer2", "head")
    spec = SpaceSection(
        kind="layer_decay", freeze=("layer*",), fixed={"layer2": 5e-5}, head=("head",)
    )
    params = {
        "freeze.layer0": True,
        "freeze.layer1": False,
        "base_lr": 1e-3,
        "decay": 0.5,
        "head_multiplier": 4.0,
    }
    # A fixed rate wins over a freeze glob: layer2 samples no freeze choice (FixedTrial would
    # raise if it asked) and keeps its rate.
    sample = SearchSpace(spec, groups).sample(FixedTrial(params))
    assert sample.lrs == {"layer0": 0.0, "layer1": 5e-4, "layer2": 5e-5, "head": 4e-3}
    assert sample.frozen == ("layer0",)


def test_layer_decay_glob_freeze_with_a_study() -> None:
    groups = ("layer0", "layer1", "head")
    space = SearchSpace(
        SpaceSection(kind="layer_decay", freeze=("layer*",), head=("head",)), groups
    )
    trial, _ = ask(space)
    assert {p for p in trial.params if p.startswith("freeze.")} == {
        "freeze.layer0",
        "freeze.layer1",
    }


@pytest.mark.parametrize(
    ("space", "where"),
    [
        (
            SpaceSection(freeze=("neck",)),
            "[space] freeze: 'neck' names no group; the groups are: emb, low, high, head",
        ),
        (SpaceSection(freeze=("n*",)), "[space] freeze: 'n*' names no group"),
        (SpaceSection(fixed={"neck": 0.0}), "[space] fixed: 'neck' names no group"),
        (SpaceSection(head=("neck",)), "[space] head: 'neck' names no group"),
        (SpaceSection(lr_ranges={"neck": (1e-3, 1e-2)}), "[space] lr_ranges: 'neck' names no"),
        (SpaceSection(kind="layer_decay", head=("*",)), "every group is a head group"),
    ],
)
def test_unknown_group_references_raise(space: SpaceSection, where: str) -> None:
    with pytest.raises(SpecError) as info:
        SearchSpace(space, GROUPS, source="study.toml")
    assert len(info.value.problems) == 1
    assert where in info.value.problems[0]
    assert str(info.value).startswith("study.toml: ")


def test_several_unknown_references_in_one_error() -> None:
    space = SpaceSection(freeze=("a",), head=("b",), fixed={"c": 0.0})
    with pytest.raises(SpecError) as info:
        SearchSpace(space, GROUPS)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "[space] freeze",
        "[space] head",
        "[space] fixed",
    ]


def run_tpe(seed: int, space: SearchSpace) -> list[dict[str, Any]]:
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=5
    )
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen = []
    for _ in range(30):
        trial = study.ask()
        sample = space.sample(trial)
        # Best near lr 1e-3 on trained groups; a frozen group scores a fixed amount.
        value = sum(-abs(math.log10(lr) + 3) if lr > 0 else -1.0 for lr in sample.lrs.values())
        study.tell(trial, value)
        seen.append({"params": trial.params, "lrs": sample.lrs, "wd": sample.weight_decay})
    return seen


def test_seeded_tpe_is_reproducible() -> None:
    spec = SpaceSection(freeze=("emb", "low"), weight_decay=(1e-5, 1e-1))
    space = SearchSpace(spec, GROUPS)
    first, again, other = run_tpe(3, space), run_tpe(3, space), run_tpe(4, space)
    assert first == again
    assert first != other
    # The freeze choice really varied, so the conditional (group) part of TPE was exercised.
    assert {t["params"]["freeze.emb"] for t in first} == {False, True}


def test_sample_frozen() -> None:
    assert Sample({"a": 0.0, "b": 1e-3, "c": 0.0}).frozen == ("a", "c")
    assert replace(Sample({"a": 1.0}), weight_decay=0.1).frozen == ()


def test_single_shares_one_rate_over_the_searched_groups() -> None:
    space = SearchSpace(
        SpaceSection(kind="single", lr=(1e-5, 1e-2), freeze=("emb",), fixed={"head": 0.5}), GROUPS
    )
    seen_frozen = seen_trained = False
    for seed in range(12):
        trial, sample = ask(space, seed=seed)
        rate = trial.params["lr"]
        assert trial.distributions["lr"] == FloatDistribution(1e-5, 1e-2, log=True)
        assert set(trial.params) == {"lr", "freeze.emb"}
        assert sample.lrs["head"] == 0.5  # fixed groups keep their rate
        assert sample.lrs["low"] == sample.lrs["high"] == rate
        if trial.params["freeze.emb"]:
            seen_frozen = True
            assert sample.lrs["emb"] == 0.0
        else:
            seen_trained = True
            assert sample.lrs["emb"] == rate
    assert seen_frozen and seen_trained


@pytest.mark.parametrize("key", ["decay = [0.5, 0.9]", 'head = ["head"]', "lr_ranges = { }"])
def test_single_rejects_the_keys_it_would_ignore(key: str, tmp_path: Any) -> None:
    from lrsearch.spec import load_spec

    path = tmp_path / "s.toml"
    path.write_text(
        f'[study]\nname = "x"\n[task]\nentry = "a.b:c"\n[groups]\nhead = ["head"]\n'
        f'[space]\nkind = "single"\n{key}\n'
    )
    with pytest.raises(SpecError, match=r"applies to kind = '(per_group|layer_decay)' only"):
        load_spec(path)
