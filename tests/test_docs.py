"""The README is part of the product: its commands must exist and its quickstart must run."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lrsearch.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _two_commands() -> tuple[str, str]:
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the 'Two commands' section must hold exactly two bash blocks"
    install, tests = (b.strip() for b in blocks)
    return install, tests


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_cli_command_is_in_the_readme(name: str) -> None:
    assert re.search(rf"\blrsearch {name}\b", README), f"README never shows `lrsearch {name}`"


@pytest.mark.parametrize(
    ("name", "option"),
    [
        (name, opt)
        for name, cmd in sorted(main.commands.items())
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    ],
)
def test_every_cli_option_is_in_the_readme(name: str, option: str) -> None:
    assert option in README, f"README never mentions `lrsearch {name} {option}`"


def test_readme_test_command_is_what_ci_runs() -> None:
    _, tests = _two_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines(), f"CI does not run the README's test command {tests!r}"


def test_readme_shows_the_study_file_reference_for_every_section() -> None:
    from lrsearch.spec import SECTIONS

    reference = README.split("## Study file reference", 1)[1]
    for section in SECTIONS:
        assert f"[{section}]" in reference


def test_readme_study_file_reference_names_every_key() -> None:
    import dataclasses

    from lrsearch import spec

    reference = README.split("## Study file reference", 1)[1].split("\n## ", 1)[0]
    missing = []
    for section in dataclasses.fields(spec.StudySpec):
        table = getattr(spec, str(section.type))
        for key in dataclasses.fields(table):
            # [groups] holds the group names themselves; its one key is auto_depth.
            if key.name != "patterns" and not re.search(rf"^#?\s*{key.name} =", reference, re.M):
                missing.append(f"[{section.name}] {key.name}")
    assert not missing, f"keys the study file reference does not show: {missing}"


@pytest.mark.slow
def test_quickstart_runs_exactly_as_the_readme_says(tmp_path: Path) -> None:
    install, _ = _two_commands()
    # The install half ran when this environment was made; run the rest as written.
    run = install.split("&&", 1)[1].strip()
    argv = shlex.split(run)
    assert argv[:2] == ["lrsearch", "run"]
    env = {**os.environ, "LRSEARCH_STORAGE": f"sqlite:///{tmp_path / 'quickstart.db'}"}
    env.pop("LRSEARCH_STORAGE_FILE", None)
    exe = Path(sys.executable).parent / "lrsearch"
    done = subprocess.run(
        [str(exe), *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best: trial" in done.stdout
    best = subprocess.run(
        [str(exe), "best", "--study", "quickstart", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert best.returncode == 0, best.stderr
    record = json.loads(best.stdout)
    assert set(record["lrs"]) == {"stem", "body", "head"}
    # The quickstart is built so that per-group rates matter: its best trial beats chance (0.2)
    # by far, and trains the head.
    assert record["value"] > 0.6
    assert record["lrs"]["head"] > 0


def test_no_code_study_files_are_read_by_the_spec_reader() -> None:
    from lrsearch.spec import StudySpec, tomllib  # tomli before Python 3.11

    section = README.split("## No-code tasks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    assert blocks, "the 'No-code tasks' section shows a study file"
    for block in blocks:
        spec = StudySpec.from_dict(tomllib.loads(block), source="README")
        assert spec.task.entry.startswith("lrsearch.tasks.")
