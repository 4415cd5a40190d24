"""The README and docs/ are part of the product: their commands must exist and their examples run.

``README`` below is the whole hand-written documentation (README.md, then every page of docs/ but
the generated CLI reference): a section moved between them is still found by its heading.
"""

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
DOCS = ROOT / "docs"
GENERATED = DOCS / "cli.md"  # written by lrsearch._cli_reference
README_FILE = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted(p for p in DOCS.glob("*.md") if p != GENERATED)
README = "\n".join([README_FILE, *(p.read_text(encoding="utf-8") for p in PAGES)])


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _two_commands() -> tuple[str, str]:
    section = README_FILE.split("## Two commands", 1)[1].split("\n## ", 1)[0]
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
            # [groups] holds the group names themselves; its one key is auto_depth. A field that
            # says where the file is ([task] folder) is not a key of it.
            if not key.metadata.get("in_file", True):
                continue
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


def test_the_notebook_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    section = README.split("## From Python (a notebook): `lrsearch.search`", 1)[1]
    found = re.search(r"<!-- lrsearch-example: notebook -->\s*```python\n(.*?)```", section, re.S)
    assert found, "the notebook section has no example marked <!-- lrsearch-example: notebook -->"
    monkeypatch.chdir(tmp_path)  # its sqlite:///notebook.db lands here
    threads = torch.get_num_threads()
    namespace: dict[str, object] = {"__name__": "readme_notebook"}
    try:
        exec(compile(found.group(1), "README:notebook", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    best = namespace["best"]
    assert (tmp_path / "notebook.db").is_file()
    assert set(best.lrs) == {"body", "head"}  # type: ignore[attr-defined]
    assert 0.0 <= best.value <= 1.0  # type: ignore[attr-defined]


# Words that name what a number in a study file counts or measures.
_UNIT_WORDS = (
    "levels",
    "seconds",
    "steps",
    "trials",
    "examples",
    "MiB",
    "fraction",
    "epochs",
    "seed",
    "no unit",
    "norm",
)


def test_every_number_in_the_study_file_reference_says_its_unit() -> None:
    reference = README.split("## Study file reference", 1)[1].split("### How a trial ends", 1)[0]
    numbers = re.findall(r"^#?\s*(\w+) = (-?[0-9][0-9.e+-]*)\s*(?:#(.*))?$", reference, re.M)
    assert len(numbers) > 10
    missing = [key for key, _, comment in numbers if not any(w in comment for w in _UNIT_WORDS)]
    assert not missing, f"study file keys whose comment names no unit: {missing}"


def test_no_code_study_files_are_read_by_the_spec_reader() -> None:
    from lrsearch.spec import StudySpec, tomllib  # tomli before Python 3.11

    section = README.split("## No-code tasks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    assert blocks, "the 'No-code tasks' section shows a study file"
    for block in blocks:
        spec = StudySpec.from_dict(tomllib.loads(block), source="README")
        assert spec.task.entry.startswith("lrsearch.tasks.")


def test_the_cli_reference_page_is_what_the_commands_say() -> None:
    from lrsearch._cli_reference import markdown

    assert GENERATED.read_text(encoding="utf-8") == markdown(), (
        "docs/cli.md is stale: run python -m lrsearch._cli_reference > docs/cli.md"
    )


def test_every_docs_page_is_in_the_site_and_every_link_resolves() -> None:
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {p.name for p in DOCS.glob("*.md")}
    anchors: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        if path not in anchors:
            headings = re.findall(r"(?m)^#{1,4} (.+)$", path.read_text(encoding="utf-8"))
            anchors[path] = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings
            }
        return anchors[path]

    broken = []
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\((?!https?:)([^)\s]+)\)", text):
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
