"""How a launch ended: each worker's exit, the study's final progress, the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

from lrsearch.errors import EXIT_INTERRUPTED
from lrsearch.launch.progress import Progress


@dataclass
class WorkerExit:
    """How one worker process ended."""

    name: str
    device: str | None
    pid: int
    returncode: int | None = None
    stopped: bool = False  # it exited after the launcher asked it to (not a failure)
    killed: bool = False  # it ignored the stop and was killed
    tail: list[str] = field(default_factory=list)  # its last lines on stderr

    @property
    def failed(self) -> bool:
        return self.returncode not in (0, None) and not self.stopped

    def describe(self) -> str:
        where = f"pid {self.pid}" + (f", device {self.device}" if self.device is not None else "")
        rc = self.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        last = f": {self.tail[-1]}" if self.tail else ""
        return f"worker {self.name} ({where}) {how}{last}"


@dataclass
class LaunchResult:
    """What a launch did: the study's final progress and how each worker ended."""

    study: str
    storage: str  # masked
    budget: int
    progress: Progress | None
    workers: list[WorkerExit]
    interrupted: bool = False
    create_returncode: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[WorkerExit]:
        return [w for w in self.workers if w.failed]

    @property
    def exit_code(self) -> int:
        """1 when the create step or a worker failed, 130 when interrupted, else 0."""
        if self.create_returncode != 0:
            return self.create_returncode if self.create_returncode > 0 else 1
        if self.failed:
            return 1
        return EXIT_INTERRUPTED if self.interrupted else 0

    def text(self) -> str:
        """A few lines for the end of a launch."""
        p = self.progress
        head = f"study {self.study!r} in {self.storage}"
        if p is None:
            return f"{head}: progress unknown (storage unreachable)"
        lines = [
            f"{head}: {p.finished}/{self.budget} finished ({p.complete} complete, {p.pruned} "
            f"pruned, {p.failed} failed) by {len(self.workers)} worker(s) in {self.seconds:.1f} s"
            + (", interrupted" if self.interrupted else "")
        ]
        if p.running or p.waiting:
            lines.append(
                f"{p.running} trial(s) still running, {p.waiting} queued (another worker, or "
                "the next one to start, takes them)"
            )
        if p.best_number is not None:
            lines.append(f"best: trial {p.best_number}, value {p.best_value:.4g}")
        return "\n".join(lines)
