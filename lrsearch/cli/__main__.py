"""``python -m lrsearch.cli``: the ``lrsearch`` command (how ``lrsearch launch`` starts workers)."""

from __future__ import annotations

from lrsearch.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
