"""Layer groups: pattern matching, resolution over a model, param groups and optimizers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lrsearch.errors import GroupError
from lrsearch.groups import (
    LayerGroups,
    build_param_groups,
    make_optimizer,
    matches,
    resolve_groups,
    trainable_names,
)


class Encoder(nn.Module):
    """``embeddings.weight``, ``encoder.layer.<i>.{weight,bias}``, ``classifier.{weight,bias}``."""

    def __init__(self, n_layers: int = 12) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(4, 4) for _ in range(n_layers)])
        self.classifier = nn.Linear(4, 2)


class Tied(nn.Module):
    """A language-model head sharing its weight with the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 10)
        self.decoder.weight = self.embed.weight


class Vit(nn.Module):
    """A top-level parameter first, then modules two and three levels deep."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(4))
        self.stem = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(2)]
        )
        self.head = nn.Linear(4, 2)


def layer(i: int) -> tuple[str, str]:
    return (f"encoder.layer.{i}.weight", f"encoder.layer.{i}.bias")


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("encoder.layer.1", "encoder.layer.1.weight", True),
        ("encoder.layer.1", "encoder.layer.10.weight", False),
        ("encoder.layer.1", "encoder.layer.1", True),
        ("classifier", "classifier.bias", True),
        ("classifier", "classifier2.bias", False),
        ("classifier.weight", "classifier.weight", True),
        ("classifier.weight", "classifier.weight_g", False),
        ("encoder", "encoder.layer.3.bias", True),
        ("layer", "encoder.layer.3.bias", False),
        ("encoder.layer.1*", "encoder.layer.10.weight", True),
        ("encoder.layer.1.*", "encoder.layer.10.weight", False),
        ("encoder.layer.[0-2].*", "encoder.layer.2.bias", True),
        ("encoder.layer.[0-2].*", "encoder.layer.12.bias", False),
        ("encoder.layer.[0-2]", "encoder.layer.1.weight", False),
        ("*.bias", "encoder.layer.0.bias", True),
        ("*.bias", "embeddings.weight", False),
        ("encoder.layer.?.weight", "encoder.layer.7.weight", True),
        ("encoder.layer.?.weight", "encoder.layer.11.weight", False),
        ("*", "anything.at.all", True),
        ("Encoder", "encoder.layer.0.weight", False),
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert matches(name, pattern) is expected


def test_module_prefix_does_not_match_a_longer_index() -> None:
    groups = resolve_groups(Encoder(), {"one": ["encoder.layer.1"], "rest": ["*"]})
    assert groups.members("one") == layer(1)
    assert "encoder.layer.10.weight" in groups.members("rest")


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (
            {"one": ["encoder.layer.1"], "enc": ["encoder"], "rest": ["*"]},
            {
                "one": layer(1),
                "enc": tuple(n for i in range(12) if i != 1 for n in layer(i)),
                "rest": ("embeddings.weight", "classifier.weight", "classifier.bias"),
            },
        ),
        (
            {"biases": ["*.bias"], "enc": ["encoder"], "rest": ["*"]},
            {
                "biases": (*(f"encoder.layer.{i}.bias" for i in range(12)), "classifier.bias"),
                "enc": tuple(f"encoder.layer.{i}.weight" for i in range(12)),
                "rest": ("embeddings.weight", "classifier.weight"),
            },
        ),
        (
            # The same groups in another order: the earlier group takes what both match.
            {"enc": ["encoder"], "biases": ["*.bias"], "rest": ["*"]},
            {
                "enc": tuple(n for i in range(12) for n in layer(i)),
                "biases": ("classifier.bias",),
                "rest": ("embeddings.weight", "classifier.weight"),
            },
        ),
        (
            [("low", ["encoder.layer.[0-5].*"]), ("high", "encoder"), ("rest", ["*"])],
            {
                "low": tuple(n for i in range(6) for n in layer(i)),
                "high": tuple(n for i in range(6, 12) for n in layer(i)),
                "rest": ("embeddings.weight", "classifier.weight", "classifier.bias"),
            },
        ),
    ],
)
def test_first_match_wins(
    groups: dict[str, list[str]] | list[tuple[str, list[str] | str]],
    expected: dict[str, tuple[str, ...]],
) -> None:
    resolved = resolve_groups(Encoder(), groups)
    assert dict(resolved.params) == expected
    assert resolved.names == tuple(expected)


def test_unmatched_parameter_is_named_with_a_catch_all_hint() -> None:
    with pytest.raises(GroupError) as info:
        resolve_groups(Encoder(), {"enc": ["encoder"], "emb": ["embeddings"]})
    message = str(info.value)
    assert "2 trainable parameter(s) match no group" in message
    assert "classifier.weight" in message and "classifier.bias" in message
    assert 'rest = ["*"]' in message


def test_many_unmatched_parameters_are_shortened() -> None:
    with pytest.raises(GroupError) as info:
        resolve_groups(Encoder(), {"emb": ["embeddings"]})
    assert "26 trainable parameter(s)" in str(info.value)
    assert "(and 21 more)" in str(info.value)


@pytest.mark.parametrize(
    ("groups", "empty"),
    [
        ({"head": ["classifer"], "rest": ["*"]}, "head"),
        ({"rest": ["*"], "head": ["classifier"]}, "head"),
        ({"enc": ["encoder"], "layer3": ["encoder.layer.3"], "rest": ["*"]}, "layer3"),
        ({"all": ["*"], "rest": ["*"]}, None),
    ],
)
def test_group_matching_nothing_is_named(groups: dict[str, list[str]], empty: str | None) -> None:
    if empty is None:
        # A second catch-all ends up empty, and catch-alls may: it is dropped.
        assert resolve_groups(Encoder(), groups).names == ("all",)
        return
    with pytest.raises(GroupError) as info:
        resolve_groups(Encoder(), groups)
    assert f"group {empty!r}" in str(info.value)
    assert "matches no trainable parameter" in str(info.value)


def test_empty_catch_all_is_dropped() -> None:
    groups = {"emb": ["embeddings"], "enc": ["encoder"], "head": ["classifier"], "rest": ["*"]}
    resolved = resolve_groups(Encoder(), groups)
    assert resolved.names == ("emb", "enc", "head")
    assert [g for g, _ in resolved.patterns] == ["emb", "enc", "head"]


def test_catch_all_takes_the_leftovers() -> None:
    resolved = resolve_groups(Encoder(), {"head": ["classifier"], "rest": ["*"]})
    assert resolved.members("rest") == (
        "embeddings.weight",
        *(n for i in range(12) for n in layer(i)),
    )
    assert resolved.match("rest") == ("*",)


def test_group_named_twice_is_an_error() -> None:
    with pytest.raises(GroupError, match="named more than once: enc"):
        resolve_groups(Encoder(), [("enc", ["encoder"]), ("enc", ["*"])])


def test_tied_parameters_are_counted_once() -> None:
    model = Tied()
    assert trainable_names(model) == ["embed.weight", "body.weight", "body.bias", "decoder.bias"]
    resolved = resolve_groups(model, {"emb": ["embed"], "dec": ["decoder"], "rest": ["*"]})
    assert resolved.members("emb") == ("embed.weight",)
    assert resolved.members("dec") == ("decoder.bias",)
    params = build_param_groups(model, resolved, {"emb": 1e-3, "dec": 1e-2, "rest": 1e-4})
    all_params = [p for g in params for p in g["params"]]
    # One tensor in one group only: torch refuses a parameter in two groups.
    assert len({id(p) for p in all_params}) == len(all_params) == 4
    make_optimizer("adamw", params)


def test_tied_parameter_under_its_second_name_matches_nothing() -> None:
    with pytest.raises(GroupError, match="group 'decw'"):
        resolve_groups(Tied(), {"decw": ["decoder.weight"], "rest": ["*"]})


def test_frozen_parameters_belong_to_no_group() -> None:
    model = Encoder()
    model.embeddings.requires_grad_(False)
    resolved = resolve_groups(model, {"head": ["classifier"], "rest": ["*"]})
    assert "embeddings.weight" not in resolved.members("rest")
    assert len(resolved.members("rest")) == 24
    with pytest.raises(GroupError, match="group 'emb'"):
        resolve_groups(model, {"emb": ["embeddings"], "rest": ["*"]})


def test_model_without_trainable_parameters() -> None:
    model = Encoder().requires_grad_(False)
    with pytest.raises(GroupError, match="no trainable parameters"):
        resolve_groups(model, {"rest": ["*"]})


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (
            1,
            {
                "cls_token": ("cls_token",),
                "stem": ("stem.weight", "stem.bias"),
                "blocks": tuple(
                    f"blocks.{b}.{m}.{p}"
                    for b in (0, 1)
                    for m in (0, 1)
                    for p in ("weight", "bias")
                ),
                "head": ("head.weight", "head.bias"),
            },
        ),
        (
            2,
            {
                "cls_token": ("cls_token",),
                "stem": ("stem.weight", "stem.bias"),
                **{
                    f"blocks.{b}": tuple(
                        f"blocks.{b}.{m}.{p}" for m in (0, 1) for p in ("weight", "bias")
                    )
                    for b in (0, 1)
                },
                "head": ("head.weight", "head.bias"),
            },
        ),
        (
            3,
            {
                "cls_token": ("cls_token",),
                "stem": ("stem.weight", "stem.bias"),
                **{
                    f"blocks.{b}.{m}": (f"blocks.{b}.{m}.weight", f"blocks.{b}.{m}.bias")
                    for b in (0, 1)
                    for m in (0, 1)
                },
                "head": ("head.weight", "head.bias"),
            },
        ),
    ],
)
def test_auto_depth_groups_in_model_order(depth: int, expected: dict[str, tuple[str, ...]]) -> None:
    model = Vit()
    resolved = resolve_groups(model, auto_depth=depth)
    assert resolved.names == tuple(expected)
    assert dict(resolved.params) == expected
    # The patterns reproduce the groups when resolved again (an export does exactly that).
    assert resolve_groups(model, resolved.patterns) == resolved


class OwnAndDeeper(nn.Module):
    """``block`` has a parameter of its own and a submodule: ``block.scale``, ``block.fc.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Module()
        self.block.scale = nn.Parameter(torch.ones(4))
        self.block.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)


def test_auto_depth_patterns_of_a_module_with_own_and_deeper_parameters() -> None:
    model = OwnAndDeeper()
    resolved = resolve_groups(model, auto_depth=2)
    assert dict(resolved.params) == {
        "block": ("block.scale",),
        "block.fc": ("block.fc.weight", "block.fc.bias"),
        "out": ("out.weight", "out.bias"),
    }
    assert resolve_groups(model, resolved.patterns) == resolved
    assert resolved.match("block.fc") == ("block.fc",)


@pytest.mark.parametrize(
    ("groups", "depth", "message"),
    [
        ({"x": ["*"]}, 1, "either groups or auto_depth"),
        (None, 0, "auto_depth must be >= 1"),
        (None, None, "no groups given"),
        ({}, None, "no groups given"),
    ],
)
def test_resolve_groups_arguments(
    groups: dict[str, list[str]] | None, depth: int | None, message: str
) -> None:
    with pytest.raises(GroupError, match=message):
        resolve_groups(Encoder(2), groups, auto_depth=depth)


def small_groups() -> tuple[Encoder, LayerGroups]:
    model = Encoder(2)
    return model, resolve_groups(
        model, {"emb": ["embeddings"], "enc": ["encoder"], "head": ["classifier"]}
    )


def test_build_param_groups_gives_each_group_its_lr_and_name() -> None:
    model, resolved = small_groups()
    params = build_param_groups(model, resolved, {"emb": 1e-5, "enc": 3e-4, "head": 2e-2})
    assert [(g["name"], g["lr"]) for g in params] == [("emb", 1e-5), ("enc", 3e-4), ("head", 2e-2)]
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert [[by_id[id(p)] for p in g["params"]] for g in params] == [
        ["embeddings.weight"],
        [*layer(0), *layer(1)],
        ["classifier.weight", "classifier.bias"],
    ]
    assert all("weight_decay" not in g for g in params)


def test_build_param_groups_weight_decay_on_every_group() -> None:
    model, resolved = small_groups()
    params = build_param_groups(
        model, resolved, {"emb": 1e-5, "enc": 3e-4, "head": 2e-2}, weight_decay=0.05
    )
    assert [g["weight_decay"] for g in params] == [0.05, 0.05, 0.05]


def test_zero_lr_freezes_the_group_and_leaves_it_out() -> None:
    model, resolved = small_groups()
    params = build_param_groups(model, resolved, {"emb": 0.0, "enc": 0, "head": 1e-3})
    assert [g["name"] for g in params] == ["head"]
    assert not model.embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_a_later_call_thaws_a_group_an_earlier_call_froze() -> None:
    model, resolved = small_groups()
    build_param_groups(model, resolved, {"emb": 0.0, "enc": 1e-3, "head": 1e-3})
    params = build_param_groups(model, resolved, {"emb": 1e-4, "enc": 1e-3, "head": 1e-3})
    assert params[0]["name"] == "emb"
    assert all(p.requires_grad for g in params for p in g["params"])


def test_build_param_groups_resolves_a_mapping() -> None:
    model = Encoder(2)
    params = build_param_groups(
        model, {"head": ["classifier"], "rest": ["*"]}, {"head": 1.0, "rest": 0.1}
    )
    assert [(g["name"], len(g["params"])) for g in params] == [("head", 2), ("rest", 5)]


@pytest.mark.parametrize(
    ("lrs", "message"),
    [
        ({"emb": 1e-3, "enc": 1e-3}, r"missing \['head'\], unknown \[\]"),
        (
            {"emb": 1e-3, "enc": 1e-3, "head": 1e-3, "neck": 1e-3},
            r"missing \[\], unknown \['neck'\]",
        ),
        ({"emb": -1e-3, "enc": 1e-3, "head": 1e-3}, r"must be >= 0 \(0 freezes a group\)"),
        ({"emb": math.nan, "enc": 1e-3, "head": 1e-3}, "must be >= 0"),
    ],
)
def test_build_param_groups_rejects_bad_lrs(lrs: dict[str, float], message: str) -> None:
    model, resolved = small_groups()
    with pytest.raises(GroupError, match=message):
        build_param_groups(model, resolved, lrs)
    # Nothing was frozen on the way to the error.
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("AdamW", torch.optim.AdamW),
    ],
)
def test_make_optimizer_keeps_each_group_lr(name: str, cls: type[torch.optim.Optimizer]) -> None:
    model, resolved = small_groups()
    params = build_param_groups(model, resolved, {"emb": 1e-5, "enc": 0.0, "head": 2e-2})
    # A group without its own lr takes the optimizer's default, as PyTorch does.
    params.append({"params": [nn.Parameter(torch.zeros(2))], "name": "extra"})
    optimizer = make_optimizer(name, params, lr=0.123, momentum=0.5)
    assert type(optimizer) is cls
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("emb", 1e-5),
        ("head", 2e-2),
        ("extra", 0.123),
    ]
    # momentum is an SGD knob; the Adam family must not receive it.
    assert ("momentum" in optimizer.defaults) is (cls is torch.optim.SGD)
    if cls is torch.optim.SGD:
        assert optimizer.param_groups[0]["momentum"] == 0.5


def test_make_optimizer_steps_each_group_at_its_own_rate() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer("sgd", [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    (a + b).sum().backward()
    optimizer.step()
    assert a.item() == pytest.approx(-0.1)
    assert b.item() == pytest.approx(-0.01)


def test_make_optimizer_unknown_name() -> None:
    with pytest.raises(GroupError, match="unknown optimizer 'lamb'; use one of adamw, adam, sgd"):
        make_optimizer("lamb", [{"params": [nn.Parameter(torch.zeros(1))]}])


# -- property: a random model, random groups, one catch-all last ----------------------------------

MODULES = ("l0", "l1", "l2")
LEAVES = ("w", "b")


def build_model(
    names: Sequence[str], frozen: set[str], tied: Sequence[tuple[str, str]]
) -> nn.Module:
    """A module tree with a parameter at each dotted name; ``tied`` pairs share one tensor."""
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(
            leaf, nn.Parameter(torch.zeros(1), requires_grad=name not in frozen)
        )
    by_name = dict(root.named_parameters())
    for keep, alias in tied:
        *path, leaf = alias.split(".")
        owner = root.get_submodule(".".join(path))
        setattr(owner, leaf, by_name[keep])
    return root


param_names = st.lists(
    st.tuples(st.lists(st.sampled_from(MODULES), max_size=3), st.sampled_from(LEAVES)).map(
        lambda t: ".".join([*t[0], t[1]])
    ),
    min_size=2,
    max_size=16,
    unique=True,
)


@st.composite
def grouped_models(draw: st.DrawFn) -> tuple[nn.Module, list[tuple[str, list[str]]]]:
    names = draw(param_names)
    frozen = set(draw(st.lists(st.sampled_from(names), max_size=len(names) // 3)))
    tied: list[tuple[str, str]] = []
    if len(names) > 1 and draw(st.booleans()):
        keep, alias = draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True))
        tied.append((keep, alias))
    prefixes = sorted(
        {".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 1)}
    )
    pattern = st.one_of(
        st.sampled_from(names),
        *([st.sampled_from(prefixes)] if prefixes else []),
        st.sampled_from(["l0*", "*.w", "*l1.*", "l?.b", "[lb]*", "*2*"]),
    )
    groups = draw(st.lists(st.lists(pattern, min_size=1, max_size=3), min_size=1, max_size=4))
    # The group order is what is random; the catch-all stays last.
    order = draw(st.permutations(range(len(groups))))
    named = [(f"g{i}", groups[i]) for i in order] + [("rest", ["*"])]
    return build_model(names, frozen, tied), named


def reference_match(name: str, pattern: str) -> bool:
    if set(pattern) & set("*?["):
        return fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


@settings(max_examples=100, deadline=None)
@given(grouped_models())
def test_every_trainable_parameter_in_exactly_one_group(
    case: tuple[nn.Module, list[tuple[str, list[str]]]],
) -> None:
    model, groups = case
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        with pytest.raises(GroupError, match="no trainable parameters"):
            resolve_groups(model, groups)
        return
    # First-match assignment, computed here independently of the library.
    owner = {
        n: next(g for g, pats in groups if any(reference_match(n, p) for p in pats))
        for n in trainable
    }
    empty = [g for g, pats in groups[:-1] if g not in owner.values()]
    if empty:
        with pytest.raises(GroupError) as info:
            resolve_groups(model, groups)
        assert f"group {empty[0]!r}" in str(info.value)
        return
    resolved = resolve_groups(model, groups)
    placed = [n for _, members in resolved.params for n in members]
    assert sorted(placed) == sorted(trainable)
    assert len(placed) == len(set(placed))
    assert {n: g for g, members in resolved.params for n in members} == owner
    order = [g for g, _ in groups]
    assert list(resolved.names) == sorted(resolved.names, key=order.index)
