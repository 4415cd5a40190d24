"""A task module beside the study file, or in the working directory, is found from any folder.

The module is the README's own example (``# mytask.py`` in "Your own task"), written under a name
unique to each test so that one test's import never serves another's.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import to_toml, toy_spec_data

from lrsearch.cli import main
from lrsearch.spec import load_spec
from lrsearch.storage import load_study, open_storage, stored_spec

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _readme_task() -> str:
    found = re.search(r"```python\n(# mytask\.py.*?)```", README, flags=re.S)
    assert found, "README's 'Your own task' has no '# mytask.py' example"
    return found.group(1)


def _write_study(folder: Path, module: str, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = toy_spec_data(
        name,
        task={"entry": f"{module}:finetune_task", "kwargs": {"n_train": 64}},
        groups={"embed": None, "body": None, "head": None, "first": ["0"], "last": ["2"]},
        space={"freeze": ["first"]},
    )
    path = folder / "mystudy.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return path


@pytest.fixture
def module() -> str:
    name = f"mytask_{uuid.uuid4().hex[:8]}"
    yield name
    sys.modules.pop(name, None)


def test_a_module_beside_the_study_file_is_found_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, study_name: str
) -> None:
    study_dir = tmp_path / "studies"
    spec_file = _write_study(study_dir, module, study_name)
    (study_dir / f"{module}.py").write_text(_readme_task(), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    url = f"sqlite:///{tmp_path / 'studies.db'}"

    result = CliRunner().invoke(main, ["run", str(spec_file), "--storage", url, "--device", "cpu"])

    assert result.exit_code == 0, result.output
    assert "best: trial" in result.stdout
    assert sys.path == before  # the folder was searched, not left on the path
    # Where the file was is not part of the search: the stored spec has no folder.
    assert stored_spec(load_study(open_storage(url), study_name)).task.folder is None
    assert load_spec(spec_file).task.folder == str(study_dir.resolve())


def test_a_module_in_the_working_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, study_name: str
) -> None:
    spec_file = _write_study(tmp_path / "studies", module, study_name)
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / f"{module}.py").write_text(_readme_task(), encoding="utf-8")
    monkeypatch.chdir(cwd)
    url = f"sqlite:///{tmp_path / 'studies.db'}"

    created = CliRunner().invoke(main, ["create", str(spec_file), "--storage", url])
    assert created.exit_code == 0, created.output
    # A worker has no study file: the working directory is where it looks.
    sys.modules.pop(module, None)
    args = ["worker", "--study", study_name, "--storage", url, "--device", "cpu"]
    worker = CliRunner().invoke(main, [*args, "--allow-task", f"{module}:finetune_task"])
    assert worker.exit_code == 0, worker.output


def test_a_missing_module_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, study_name: str
) -> None:
    spec_file = _write_study(tmp_path / "studies", module, study_name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["run", str(spec_file), "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    )
    assert result.exit_code == 1
    assert f"cannot import task module {module!r}" in result.stderr
    assert "beside the study file" in result.stderr


def test_launched_workers_search_the_study_files_folder(
    tmp_path: Path, module: str, study_name: str
) -> None:
    from lrsearch.launch import Launcher, LaunchOptions

    spec_file = _write_study(tmp_path / "studies", module, study_name)
    launcher = Launcher(
        spec_file, LaunchOptions(n_workers=2, storage=f"sqlite:///{tmp_path / 's.db'}")
    )
    for worker in launcher.workers:
        paths = worker.env["PYTHONPATH"].split(os.pathsep)
        assert str((tmp_path / "studies").resolve()) in paths
