"""The largest values lrsearch accepts, each with the reason for it; imports nothing.

- A study name: Optuna's schema stores it in a ``VARCHAR(512)``. PostgreSQL enforces that (a longer
  name failed deep inside Optuna), SQLite does not; one rule for both, so a study can move.
- A seed: Optuna's samplers seed NumPy, which takes ``0 .. 2**32 - 1``.
- Layer groups: each is a searched dimension (two, with freezing). Past a few hundred the
  sampler's model of the space costs minutes per trial and the search learns nothing in the
  budgets lrsearch is for; coarser patterns or a smaller ``auto_depth`` say the same with fewer.
"""

from __future__ import annotations

MAX_STUDY_NAME = 512
SEED_RANGE = 2**32  # seeds are 0 .. SEED_RANGE - 1
MAX_GROUPS = 256


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study, or ``None``."""
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_STUDY_NAME:
        return (
            f"must be at most {MAX_STUDY_NAME} characters (Optuna's database schema), got "
            f"{len(name)}"
        )
    return None
