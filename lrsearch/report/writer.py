"""Writing a report's folder: the PNG plots and ``index.html``."""

from __future__ import annotations

from pathlib import Path

import optuna

from lrsearch.errors import LrsearchError
from lrsearch.report.data import collect
from lrsearch.report.figures import _matplotlib, _png, make_figures
from lrsearch.report.page import render_html


def write_report(
    storage: optuna.storages.BaseStorage | str | None, study_name: str, out_dir: Path | str
) -> Path:
    """Write a study's report into ``out_dir``: the PNG plots and ``index.html``.

    Args:
        storage: An Optuna storage or a storage URL.
        study_name: The study.
        out_dir: The folder (created if missing; files of the same names are replaced).

    Returns:
        The path of ``index.html``.

    Raises:
        LrsearchError: matplotlib is missing, ``out_dir`` is a file or cannot be written.
        StudyNotFoundError: No such study.
    """
    _matplotlib()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LrsearchError(
            f"cannot write the report to {str(out)!r}: it is a file; name a folder with -o DIR"
        )
    data = collect(storage, study_name)
    figures = make_figures(data)
    images = {name: _png(fig) for name, fig in figures.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            (out / f"{name}.png").write_bytes(png)
        page = out / "index.html"
        page.write_text(render_html(data, images), encoding="utf-8")
    except OSError as e:
        raise LrsearchError(f"cannot write the report to {str(out)!r}: {e.strerror or e}") from e
    return page
