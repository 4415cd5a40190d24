"""The public API: every advertised name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lrsearch


@pytest.mark.parametrize("name", [n for n in lrsearch.__all__ if n != "__version__"])
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(lrsearch, name)
    if name == "search":  # the search loop's module, callable as the notebook API
        assert value is sys.modules["lrsearch.search"] and callable(value)
        return
    assert getattr(value, "__name__", name) == name


def test_all_lists_exactly_the_lazy_exports() -> None:
    exports = set(lrsearch._EXPORTS) | {"search"}  # search: lrsearch/__init__.py's __getattr__
    assert set(lrsearch.__all__) - {"__version__"} == exports


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lrsearch.nope  # type: ignore[attr-defined]


def test_import_does_not_load_torch_or_optuna() -> None:
    code = "import sys, lrsearch; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_version_is_the_installed_one_and_the_cli_says_it() -> None:
    from importlib.metadata import version

    from click.testing import CliRunner

    from lrsearch.cli import main

    assert lrsearch.__version__ == version("lrsearch")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"lrsearch, version {lrsearch.__version__}"
