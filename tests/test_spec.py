"""Study files: parsing, defaults, round trips, and every problem reported at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lrsearch.errors import SpecError
from lrsearch.spec import (
    SECTIONS,
    GroupsSection,
    PrunerSection,
    SamplerSection,
    SpaceSection,
    StudySection,
    StudySpec,
    TaskSection,
    TrainSection,
    load_spec,
    tomllib,
)

FULL = """
[study]
name = "demo"
direction = "maximize"
n_trials = 40
timeout = 600
seed = 7

[task]
entry = "mypkg.tasks:build"
kwargs = { n_train = 2000, subset = "a" }

[groups]
embeddings = ["embeddings.*"]
lower = ["encoder.layer.[0-2].*"]
upper = "encoder.layer.3"
head = ["pooler", "classifier.*"]

[space]
kind = "layer_decay"
lr = [1e-6, 1e-2]
freeze = ["embeddings", "lower"]
fixed = { upper = 5e-4 }
decay = [0.6, 0.9]
head = "head"
head_multiplier = [2, 50]
weight_decay = [1e-5, 1e-2]

[train]
optimizer = "sgd"
epochs = 3
max_steps = 500
batch_size = 16
eval_batch_size = 128
eval_every = 25
precision = "bf16"
schedule = "warmup_cosine"
warmup_ratio = 0.1
grad_clip = 1
momentum = 0.8
freeze_batchnorm = false

[pruner]
kind = "hyperband"
min_resource = 2
reduction_factor = 4
n_startup_trials = 3
n_warmup_steps = 10

[sampler]
kind = "random"
n_startup_trials = 5
multivariate = false
"""

MINIMAL = """
[study]
name = "t"

[task]
entry = "pkg.mod:fn"

[groups]
body = ["body.*"]
head = ["head.*"]
"""

# Section bodies of a small valid file; a case replaces some (None drops the section).
BASE_SECTIONS: dict[str, str] = {
    "study": 'name = "t"',
    "task": 'entry = "pkg.mod:fn"',
    "groups": 'body = ["body.*"]\nhead = ["head.*"]',
}


def make_toml(sections: dict[str, str | None]) -> str:
    """A study file from :data:`BASE_SECTIONS` with ``sections`` replacing or adding bodies."""
    merged: dict[str, str | None] = {**BASE_SECTIONS, **sections}
    return "\n\n".join(f"[{name}]\n{body}" for name, body in merged.items() if body is not None)


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_error(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    return info.value


def test_full_file_parses_into_the_dataclasses(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    assert spec == StudySpec(
        study=StudySection("demo", "maximize", 40, 600.0, 7),
        task=TaskSection("mypkg.tasks:build", {"n_train": 2000, "subset": "a"}),
        groups=GroupsSection(
            patterns=(
                ("embeddings", ("embeddings.*",)),
                ("lower", ("encoder.layer.[0-2].*",)),
                ("upper", ("encoder.layer.3",)),
                ("head", ("pooler", "classifier.*")),
            )
        ),
        space=SpaceSection(
            kind="layer_decay",
            lr=(1e-6, 1e-2),
            freeze=("embeddings", "lower"),
            fixed={"upper": 5e-4},
            decay=(0.6, 0.9),
            head=("head",),
            head_multiplier=(2.0, 50.0),
            weight_decay=(1e-5, 1e-2),
        ),
        train=TrainSection(
            optimizer="sgd",
            epochs=3,
            max_steps=500,
            batch_size=16,
            eval_batch_size=128,
            eval_every=25,
            precision="bf16",
            schedule="warmup_cosine",
            warmup_ratio=0.1,
            grad_clip=1.0,
            momentum=0.8,
            freeze_batchnorm=False,
        ),
        pruner=PrunerSection("hyperband", 2, 4, 3, 10),
        sampler=SamplerSection("random", 5, False),
    )
    assert spec.groups.names == ("embeddings", "lower", "upper", "head")
    # Integers where numbers are expected arrive as floats, so they compare and store alike.
    assert isinstance(spec.study.timeout, float)
    assert isinstance(spec.train.grad_clip, float)


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    assert (spec.study.direction, spec.study.n_trials, spec.study.timeout, spec.study.seed) == (
        None,
        20,
        None,
        None,
    )
    assert spec.task.kwargs == {}
    assert spec.groups.auto_depth is None
    assert spec.space.kind == "per_group"
    assert spec.space.lr == (1e-5, 1e-1)
    assert (spec.space.freeze, spec.space.fixed, spec.space.lr_ranges) == ((), {}, {})
    assert spec.space.weight_decay is None
    assert (spec.train.optimizer, spec.train.precision, spec.train.schedule) == (
        "adamw",
        "auto",
        "constant",
    )
    assert (spec.train.epochs, spec.train.batch_size, spec.train.max_steps) == (1, 32, None)
    assert spec.train.freeze_batchnorm is True
    assert spec.pruner.kind == "median"
    assert (spec.sampler.kind, spec.sampler.multivariate) == ("tpe", True)


# Every optional key, one at a time: (section, body line).
OPTIONAL_KEYS = [
    ("study", 'name = "t"\ndirection = "minimize"'),
    ("study", 'name = "t"\nn_trials = 3'),
    ("study", 'name = "t"\ntimeout = 1.5'),
    ("study", 'name = "t"\nseed = 0'),
    ("task", 'entry = "pkg.mod:fn"\nkwargs = { a = 1, b = [1, 2], c = { d = "e" } }'),
    ("space", 'kind = "layer_decay"\nhead = ["head"]'),
    ("space", "lr = [1e-4, 1e-2]"),
    ("space", 'lr_ranges = { head = [1e-3, 1.0], "b*" = [1e-5, 1e-4] }'),
    ("space", 'freeze = ["body"]'),
    ("space", 'freeze = "body"'),
    ("space", 'freeze = ["body"]\nfreeze_mode = "prefix"'),
    ("space", "fixed = { body = 0.0, head = 1e-3 }"),
    ("space", 'kind = "layer_decay"\ndecay = [0.7, 0.95]'),
    ("space", 'kind = "layer_decay"\nhead_multiplier = [1, 10]'),
    ("space", "weight_decay = 0.01"),
    ("space", "weight_decay = 0"),
    ("space", "weight_decay = [1e-6, 1e-1]"),
    ("train", 'optimizer = "adam"'),
    ("train", "epochs = 2"),
    ("train", "max_steps = 100"),
    ("train", "batch_size = 8"),
    ("train", "eval_batch_size = 64"),
    ("train", "eval_every = 5"),
    ("train", 'precision = "fp16"'),
    ("train", 'schedule = "warmup_linear"'),
    ("train", "warmup_ratio = 0.25"),
    ("train", "grad_clip = 0.5"),
    ("train", "momentum = 0.0"),
    ("train", "freeze_batchnorm = false"),
    ("train", "compile = true"),
    ("pruner", 'kind = "successive_halving"'),
    ("pruner", "min_resource = 3"),
    ("pruner", "reduction_factor = 2"),
    ("pruner", "n_startup_trials = 0"),
    ("pruner", "n_warmup_steps = 4"),
    ("sampler", 'kind = "random"'),
    ("sampler", "n_startup_trials = 1"),
    ("sampler", "multivariate = false"),
]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(FULL, id="full"),
        pytest.param(MINIMAL, id="minimal"),
        pytest.param(make_toml({"groups": "auto_depth = 2"}), id="auto_depth"),
        pytest.param(
            make_toml({"groups": "auto_depth = 1", "space": 'freeze = ["layer*"]'}),
            id="auto_depth-with-refs",
        ),
        *(
            pytest.param(make_toml({section: body}), id=f"{section}:{body.splitlines()[-1]}")
            for section, body in OPTIONAL_KEYS
        ),
    ],
)
def test_to_dict_from_dict_round_trip(tmp_path: Path, text: str) -> None:
    spec = load_spec(write(tmp_path, text))
    data = spec.to_dict()
    # The spec is stored as JSON inside the study: it must survive that, not only a dict copy.
    stored = json.loads(json.dumps(data))
    assert StudySpec.from_dict(stored) == spec
    assert StudySpec.from_dict(stored).to_dict() == data


@pytest.mark.parametrize(("section", "body"), OPTIONAL_KEYS)
def test_each_optional_key_changes_the_spec(tmp_path: Path, section: str, body: str) -> None:
    # Guards the round-trip table: each key must be read, not silently left at its default.
    default = load_spec(write(tmp_path, MINIMAL, "a.toml"))
    changed = load_spec(write(tmp_path, make_toml({section: body}), "b.toml"))
    assert changed.to_dict()[section] != default.to_dict()[section]


def test_from_dict_leaves_its_input_alone(tmp_path: Path) -> None:
    data = load_spec(write(tmp_path, FULL)).to_dict()
    before = copy.deepcopy(data)
    StudySpec.from_dict(data)
    assert data == before


def test_to_dict_of_auto_depth_has_no_patterns(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, make_toml({"groups": "auto_depth = 3"})))
    assert spec.to_dict()["groups"] == {"auto_depth": 3}
    assert spec.groups == GroupsSection(auto_depth=3)


@pytest.mark.parametrize(
    ("study_body", "same"),
    [
        ('name = "other"', True),
        ('name = "t"\nn_trials = 99', True),
        ('name = "t"\ntimeout = 5', True),
        ('name = "other"\nn_trials = 2\ntimeout = 60', True),
        ('name = "t"\nseed = 1', False),
        ('name = "t"\ndirection = "minimize"', False),
    ],
)
def test_search_dict_ignores_name_and_budget(tmp_path: Path, study_body: str, same: bool) -> None:
    base = load_spec(write(tmp_path, MINIMAL, "a.toml"))
    other = load_spec(write(tmp_path, make_toml({"study": study_body}), "b.toml"))
    assert (base.search_dict() == other.search_dict()) is same
    assert base.to_dict() != other.to_dict()


def test_search_dict_sees_the_searched_parts(tmp_path: Path) -> None:
    base = load_spec(write(tmp_path, MINIMAL, "a.toml"))
    other = load_spec(write(tmp_path, make_toml({"space": "lr = [1e-4, 1e-2]"}), "b.toml"))
    assert base.search_dict() != other.search_dict()


def test_every_problem_in_one_error(tmp_path: Path) -> None:
    text = make_toml(
        {
            "study": 'name = "t"\nn_trials = 0',
            "space": 'lr = [1e-2, 1e-4]\nfreeze = ["neck"]',
            "train": 'optimizer = "lamb"\nwarmup_ratio = 1.5',
            "bogus": "x = 1",
        }
    )
    error = spec_error(tmp_path, text)
    expected = [
        "[bogus]",
        "[study] n_trials",
        "[space] lr",
        "[space] freeze",
        "[train] optimizer",
        "[train] warmup_ratio",
    ]
    assert len(error.problems) == len(expected)
    for where in expected:
        assert sum(p.startswith(where) for p in error.problems) == 1, where
        assert where in str(error)
    assert f"{len(expected)} problems" in str(error)


# (id, section bodies, where the problem is, what the message says is expected)
BAD: list[tuple[str, dict[str, str | None], str, str]] = [
    ("unknown-section", {"bogus": "x = 1"}, "[bogus]", "unknown section; the sections are study"),
    ("missing-task", {"task": None}, "[task]", "section is required"),
    ("missing-groups", {"groups": None}, "[groups]", "section is required"),
    ("empty-groups", {"groups": ""}, "[groups]", "section is required"),
    ("missing-name", {"study": "n_trials = 3"}, "[study] name", "is required"),
    ("empty-name", {"study": 'name = " "'}, "[study] name", "must not be empty"),
    ("missing-entry", {"task": "kwargs = {}"}, "[task] entry", "is required"),
    ("entry-format", {"task": 'entry = "pkg.mod.fn"'}, "[task] entry", "'package.module:function'"),
    ("entry-not-str", {"task": "entry = 3"}, "[task] entry", "must be a string, got 3"),
    ("kwargs-not-table", {"task": 'entry = "a:b"\nkwargs = [1]'}, "[task] kwargs", "a table"),
    ("lr-low-gt-high", {"space": "lr = [1e-2, 1e-4]"}, "[space] lr", "`low <= high` must hold"),
    ("lr-low-zero", {"space": "lr = [0, 1e-2]"}, "[space] lr", "`low > 0` must hold"),
    ("lr-low-negative", {"space": "lr = [-1e-3, 1e-2]"}, "[space] lr", "`low > 0` must hold"),
    ("lr-not-list", {"space": "lr = 1e-3"}, "[space] lr", "a [low, high] pair of numbers"),
    ("lr-three", {"space": "lr = [1e-4, 1e-3, 1e-2]"}, "[space] lr", "a [low, high] pair"),
    ("lr-bool", {"space": "lr = [true, 1e-2]"}, "[space] lr", "a [low, high] pair of numbers"),
    ("lr-inf", {"space": "lr = [1e-4, inf]"}, "[space] lr", "must be finite"),
    ("range-not-list", {"space": "lr_ranges = { head = 0.1 }"}, "[space] lr_ranges.head", "pair"),
    (
        "range-low-high",
        {"space": 'kind = "layer_decay"\ndecay = [0.9, 0.5]'},
        "[space] decay",
        "`low <= high`",
    ),
    (
        "decay-high",
        {"space": 'kind = "layer_decay"\ndecay = [0.5, 1.5]'},
        "[space] decay",
        "`high <= 1.0` must hold",
    ),
    (
        "mult-zero",
        {"space": 'kind = "layer_decay"\nhead_multiplier = [0, 10]'},
        "[space] head_multiplier",
        "`low > 0`",
    ),
    ("n-trials-bool", {"study": 'name = "t"\nn_trials = true'}, "[study] n_trials", "an integer"),
    ("n-trials-zero", {"study": 'name = "t"\nn_trials = 0'}, "[study] n_trials", "must be >= 1"),
    ("n-trials-float", {"study": 'name = "t"\nn_trials = 2.5'}, "[study] n_trials", "an integer"),
    ("timeout-neg", {"study": 'name = "t"\ntimeout = -1'}, "[study] timeout", "must be > 0"),
    ("timeout-bool", {"study": 'name = "t"\ntimeout = true'}, "[study] timeout", "a number"),
    ("seed-neg", {"study": 'name = "t"\nseed = -1'}, "[study] seed", "must be >= 0"),
    (
        "direction",
        {"study": 'name = "t"\ndirection = "up"'},
        "[study] direction",
        "must be one of maximize, minimize",
    ),
    ("grad-clip-bool", {"train": "grad_clip = true"}, "[train] grad_clip", "must be a number"),
    ("grad-clip-zero", {"train": "grad_clip = 0"}, "[train] grad_clip", "must be > 0.0"),
    ("epochs-zero", {"train": "epochs = 0"}, "[train] epochs", "must be >= 1"),
    ("bn-not-bool", {"train": "freeze_batchnorm = 1"}, "[train] freeze_batchnorm", "true or false"),
    (
        "optimizer",
        {"train": 'optimizer = "lamb"'},
        "[train] optimizer",
        "must be one of adamw, adam, sgd",
    ),
    (
        "precision",
        {"train": 'precision = "fp8"'},
        "[train] precision",
        "must be one of auto, fp32, bf16, fp16",
    ),
    (
        "schedule",
        {"train": 'schedule = "cosine"'},
        "[train] schedule",
        "must be one of constant, warmup_cosine, warmup_linear",
    ),
    (
        "pruner",
        {"pruner": 'kind = "asha"'},
        "[pruner] kind",
        "must be one of hyperband, successive_halving, median, none",
    ),
    ("reduction", {"pruner": "reduction_factor = 1"}, "[pruner] reduction_factor", ">= 2"),
    (
        "sampler",
        {"sampler": 'kind = "cmaes"'},
        "[sampler] kind",
        "must be one of tpe, gp, random, auto",
    ),
    ("space-kind", {"space": 'kind = "grid"'}, "[space] kind", "must be one of per_group"),
    ("warmup-one", {"train": "warmup_ratio = 1.0"}, "[train] warmup_ratio", "must be < 1"),
    ("warmup-neg", {"train": "warmup_ratio = -0.1"}, "[train] warmup_ratio", "must be >= 0.0"),
    ("freeze-unknown", {"space": 'freeze = ["neck"]'}, "[space] freeze", "'neck' names no group"),
    ("freeze-glob-unknown", {"space": 'freeze = ["n*"]'}, "[space] freeze", "'n*' names no group"),
    ("freeze-not-names", {"space": "freeze = [1]"}, "[space] freeze", "a list of group names"),
    ("fixed-unknown", {"space": "fixed = { neck = 0.1 }"}, "[space] fixed", "names no group"),
    (
        "decay-in-per-group",
        {"space": "decay = [0.5, 0.9]"},
        "[space] decay",
        "applies to kind = 'layer_decay' only",
    ),
    (
        "ranges-in-layer-decay",
        {"space": 'kind = "layer_decay"\nlr_ranges = { head = [1e-4, 1e-2] }'},
        "[space] lr_ranges",
        "applies to kind = 'per_group' only",
    ),
    (
        "head-unknown",
        {"space": 'kind = "layer_decay"\nhead = ["neck"]'},
        "[space] head",
        "'neck' names no group",
    ),
    (
        "lr-ranges-unknown",
        {"space": "lr_ranges = { neck = [1e-4, 1e-2] }"},
        "[space] lr_ranges",
        "'neck' names no group; the groups are: body, head",
    ),
    ("fixed-negative", {"space": "fixed = { body = -1e-3 }"}, "[space] fixed.body", ">= 0"),
    ("fixed-bool", {"space": "fixed = { body = true }"}, "[space] fixed.body", "a learning rate"),
    (
        "fixed-and-frozen",
        {"space": 'freeze = ["body"]\nfixed = { body = 0.1 }'},
        "[space] fixed.body",
        "is also in freeze",
    ),
    (
        "freeze-mode-unknown",
        {"space": 'freeze = ["body"]\nfreeze_mode = "bottom"'},
        "[space] freeze_mode",
        "one of",
    ),
    (
        "freeze-mode-prefix-without-freeze",
        {"space": 'freeze_mode = "prefix"'},
        "[space] freeze_mode",
        "freeze names none",
    ),
    (
        "freeze-mode-prefix-gap",
        {"space": 'freeze = ["head"]\nfreeze_mode = "prefix"'},
        "[space] freeze_mode",
        "body lies below 'head' and may not be frozen; add it to freeze, fix it at 0",
    ),
    ("wd-negative", {"space": "weight_decay = -0.1"}, "[space] weight_decay", "must be >= 0"),
    ("wd-bool", {"space": "weight_decay = true"}, "[space] weight_decay", "a number >= 0"),
    ("wd-range-zero", {"space": "weight_decay = [0, 0.1]"}, "[space] weight_decay", "`low > 0`"),
    (
        "all-heads",
        {"space": 'kind = "layer_decay"\nhead = ["*"]'},
        "[space] head",
        "every group is a head group",
    ),
    (
        "auto-depth-mixed",
        {"groups": 'auto_depth = 1\nhead = ["head.*"]'},
        "[groups] head",
        "remove the named groups or auto_depth",
    ),
    ("auto-depth-zero", {"groups": "auto_depth = 0"}, "[groups] auto_depth", "must be >= 1"),
    (
        "group-name-chars",
        {"groups": '"bo dy" = ["body.*"]'},
        "[groups] bo dy",
        "letters, digits, '_', '.', '-' only",
    ),
    (
        "group-name-glob",
        {"groups": '"b*" = ["body.*"]'},
        "[groups] b*",
        "letters, digits, '_', '.', '-' only",
    ),
    ("empty-patterns", {"groups": "body = []"}, "[groups] body", "a non-empty list of parameter"),
    ("empty-pattern", {"groups": 'body = [""]'}, "[groups] body", "a non-empty list of parameter"),
    ("pattern-not-str", {"groups": "body = [1]"}, "[groups] body", "a non-empty list of parameter"),
    ("start-unknown", {"space": 'start = "grid"'}, "[space] start", "one of sampler, single"),
    (
        "start-in-single",
        {"space": 'kind = "single"\nstart = "single"'},
        "[space] start",
        "applies to kind = 'per_group' only",
    ),
    (
        "start-takes-the-budget",
        {"study": 'name = "t"\nn_trials = 8', "space": 'start = "single"\nstart_trials = 8'},
        "[space] start_trials",
        "takes the whole search budget (8 trials)",
    ),
    (
        "start-and-reseeds-take-the-budget",
        {
            "study": 'name = "t"\nn_trials = 10',
            "space": 'start = "single"\nstart_trials = 4',
            "winner": "reseeds = 2\ntop_k = 3",
        },
        "[space] start_trials",
        "takes the whole search budget (4 trials)",
    ),
    (
        "reseeds-take-the-budget",
        {"study": 'name = "t"\nn_trials = 6', "winner": "reseeds = 2\ntop_k = 3"},
        "[winner] reseeds",
        "reseeds x top_k = 6 retrainings are counted in [study] n_trials (6)",
    ),
    ("top-k-zero", {"winner": "top_k = 0"}, "[winner] top_k", "must be >= 1"),
    (
        "compile-with-stacked-trials",
        {"train": "compile = true\nbatch_trials = 4"},
        "[train] compile",
        "set compile = false or batch_trials = 1",
    ),
    ("compile-not-bool", {"train": 'compile = "yes"'}, "[train] compile", "true or false"),
]

UNKNOWN_KEY = [
    (section, {section: f"{BASE_SECTIONS.get(section, '')}\ncolour = 1"})
    for section in SECTIONS
    if section != "groups"
]


@pytest.mark.parametrize(
    ("sections", "where", "expected"),
    [pytest.param(s, w, e, id=i) for i, s, w, e in BAD]
    + [
        pytest.param(s, f"[{name}] colour", f"unknown key; the keys of [{name}] are", id=name)
        for name, s in UNKNOWN_KEY
    ],
)
def test_bad_input_names_key_and_expectation(
    tmp_path: Path, sections: dict[str, str | None], where: str, expected: str
) -> None:
    error = spec_error(tmp_path, make_toml(sections))
    assert len(error.problems) == 1, error.problems
    (problem,) = error.problems
    assert problem.startswith(where + ":"), problem
    assert expected in problem


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    error = spec_error(tmp_path, make_toml({"train": "optimiser = 'adamw'"}))
    assert "optimizer" in error.problems[0].split("are", 1)[1]


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    text = 'train = 3\n\n[study]\nname = "t"\n\n[task]\nentry = "a:b"\n\n[groups]\nx = ["*"]'
    error = spec_error(tmp_path, text)
    assert error.problems == ["[train]: must be a table, got int"]


def test_fixed_group_inside_a_freeze_glob_is_allowed(tmp_path: Path) -> None:
    # "Every layer may freeze, but this one is fixed": the fixed rate wins (see test_space.py).
    text = make_toml({"space": 'freeze = ["*"]\nfixed = { body = 0.1 }'})
    spec = load_spec(write(tmp_path, text))
    assert (spec.space.freeze, spec.space.fixed) == (("*",), {"body": 0.1})


def test_prefix_freezing_above_a_group_fixed_at_zero_is_allowed(tmp_path: Path) -> None:
    # A group frozen for good is part of every prefix: the searched prefix may start above it.
    text = make_toml({"space": 'freeze = ["head"]\nfreeze_mode = "prefix"\nfixed = { body = 0 }'})
    spec = load_spec(write(tmp_path, text))
    assert (spec.space.freeze_mode, spec.space.fixed) == ("prefix", {"body": 0.0})
    nonzero = make_toml(
        {"space": 'freeze = ["head"]\nfreeze_mode = "prefix"\nfixed = { body = 1e-3 }'}
    )
    (problem,) = spec_error(tmp_path, nonzero).problems
    assert problem.startswith("[space] freeze_mode: 'prefix' freezes groups from the bottom up")


def test_reference_to_a_group_with_bad_patterns_is_one_problem(tmp_path: Path) -> None:
    # `head` exists but its patterns are bad: freeze = ["head"] must not add "names no group".
    text = make_toml({"groups": 'body = ["body.*"]\nhead = []', "space": 'freeze = ["head"]'})
    error = spec_error(tmp_path, text)
    assert [p.split(":")[0] for p in error.problems] == ["[groups] head"]


def test_invalid_toml(tmp_path: Path) -> None:
    error = spec_error(tmp_path, '[study]\nname = "t\n')
    assert len(error.problems) == 1
    assert error.problems[0].startswith("invalid TOML:")
    assert "line 2" in error.problems[0]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "study.toml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert "file not found" in str(info.value)


def test_directory_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spec(tmp_path)


def test_binary_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_bytes(b"\xff\xfe[study]\x00")
    with pytest.raises(SpecError, match="not UTF-8 text") as info:
        load_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [[], "x", 3])
def test_from_dict_rejects_a_non_table(data: Any) -> None:
    with pytest.raises(SpecError, match="a spec must be a table of sections"):
        StudySpec.from_dict(data, source="db")


def test_from_dict_names_its_source() -> None:
    with pytest.raises(SpecError) as info:
        StudySpec.from_dict({"study": {"name": "t"}}, source="study 'x' in db")
    assert str(info.value).startswith("study 'x' in db: 2 problems:")
    assert [p.split(":")[0] for p in info.value.problems] == ["[task]", "[groups]"]


def _section_keys() -> list[tuple[str, str]]:
    import dataclasses
    import typing

    sections = typing.get_type_hints(StudySpec)
    return [
        (name, key.name)
        for name, cls in sections.items()
        if name != "groups"  # its keys are the group names
        for key in dataclasses.fields(cls)
        if key.metadata.get("in_file", True)
    ]


@pytest.mark.parametrize(("section", "key"), _section_keys())
def test_every_field_is_a_key_the_reader_checks(section: str, key: str) -> None:
    # The reader is driven by the dataclass fields: a key it did not know would be "unknown".
    data: dict[str, Any] = tomllib.loads(MINIMAL)
    data.setdefault(section, {})[key] = object()
    with pytest.raises(SpecError) as info:
        StudySpec.from_dict(data, source="s")
    where = [p.split(":")[0] for p in info.value.problems]
    assert f"[{section}] {key}" in where
    assert not any("unknown key" in p for p in info.value.problems)
