"""The ``lrsearch`` command: a thin shell over the library.

- :mod:`~lrsearch.cli.app`: the click group; library errors become exit codes there, in one place.
- :mod:`~lrsearch.cli.options`: the options several commands share, each defined once.
- :mod:`~lrsearch.cli.text`: what the commands print (tables, summaries, progress).
- :mod:`~lrsearch.cli.run`: ``run``, ``create``, ``worker``, ``launch`` (the commands that train).
- :mod:`~lrsearch.cli.read`: ``studies``, ``best``, ``trials``, ``report``, ``export``.
- :mod:`~lrsearch.cli.retrain`: ``verify``, ``confirm`` (retraining with fresh seeds).
- :mod:`~lrsearch.cli.init`: ``init`` (a study file for a model).

Every module imports only click and light parts of lrsearch at start-up; Optuna, torch and pandas
are imported inside the commands, so ``lrsearch --help`` and a worker's start stay fast.
``python -m lrsearch.cli`` runs the command (:mod:`lrsearch.cli.__main__`).
"""

from __future__ import annotations

from lrsearch.cli import init, read, retrain, run
from lrsearch.cli.app import EXIT_INTERRUPTED, main, one_line
from lrsearch.cli.read import TRIAL_FORMATS, TRIAL_STATES

# In the order they were always added (``--help`` and docs/cli.md list them by name).
for _command in (
    run.run,
    init.init,
    run.create,
    run.worker,
    read.studies,
    read.best,
    read.trials,
    read.report,
    read.export,
    retrain.verify,
    retrain.confirm,
    run.launch,
):
    main.add_command(_command)
del _command

__all__ = ["EXIT_INTERRUPTED", "TRIAL_FORMATS", "TRIAL_STATES", "main", "one_line"]
