"""Task accounting: published, executed, executed twice, lost.

Every fault scenario asks the same question: did any task vanish or run twice?
The lab keeps one kind of account, a :class:`Ledger`: a directory shared by the
producer and all consumers (the seed loop's fleet, the fault matrix's Celery
cells through :mod:`hangproof.lab.clients.celery_app` and its kombu and
aio-pika cells through :mod:`hangproof.lab.clients.matrix_clients`):

- ``published.log``: one task id per line, appended by the single producer
  after the broker confirmed the publish;
- ``executed/``: one file per execution, created with ``O_CREAT | O_EXCL`` so
  that concurrent worker processes (prefork children, other clients) never
  race on a shared file, and a reader never sees half a task id (it is the
  file's name). The first execution of a task creates ``<id>``; any later one
  creates ``<id>.dup-<n>``.
  Each file holds ``<pid> <wall-clock time>``: who ran it, and when (the seed
  loop's progress gaps, :meth:`Ledger.execution_times`).

    >>> ledger = Ledger(Path("/tmp/hp-ledger")); ledger.reset()  # doctest: +SKIP
    >>> ledger.record_published("t1"); ledger.record_executed("t1")  # doctest: +SKIP
    >>> ledger.counts().to_dict()  # doctest: +SKIP
    {'published': 1, 'executed': 1, 'duplicates': 0, 'lost': 0, 'unexpected': 0}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: A task executed this many times is absurd; bounds the O_EXCL probing loop.
MAX_EXECUTIONS_PER_TASK = 1000
DUP_MARK = ".dup-"


@dataclass(frozen=True)
class TaskCounts:
    """The accounting a scenario reports under ``tasks``."""

    published: int
    executed: int  # distinct published tasks that ran at least once
    duplicates: int  # executions beyond the first, summed over tasks
    lost: int  # published (confirmed) but never executed
    unexpected: int = 0  # executed but never confirmed (publish outcome unknown)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def tally(published: list[str], executions: list[str]) -> TaskCounts:
    """Count from the raw records: published ids and one entry per execution.

    Pure, so the arithmetic is unit-tested without processes.

    >>> tally(["a", "b", "c"], ["a", "a", "b", "x"]).to_dict()
    {'published': 3, 'executed': 2, 'duplicates': 1, 'lost': 1, 'unexpected': 1}
    """
    pub = set(published)
    runs: dict[str, int] = {}
    for task_id in executions:
        runs[task_id] = runs.get(task_id, 0) + 1
    executed = pub & set(runs)
    return TaskCounts(
        published=len(pub),
        executed=len(executed),
        duplicates=sum(n - 1 for n in runs.values()),
        lost=len(pub - set(runs)),
        # A publish can reach the broker while its confirm is lost with the
        # connection: the task runs but the producer never logged it.
        unexpected=len(set(runs) - pub),
    )


class Ledger:
    """The shared directory; safe for many writer processes (see module doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def published_path(self) -> Path:
        return self.directory / "published.log"

    @property
    def executed_dir(self) -> Path:
        return self.directory / "executed"

    def reset(self) -> None:
        """Start a fresh count (removes the previous run's records)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
        self.executed_dir.mkdir(parents=True)
        self.published_path.touch()

    def record_published(self, task_id: str) -> None:
        # Only the one producer appends; O_APPEND keeps each line whole anyway.
        with open(self.published_path, "a") as f:
            f.write(task_id + "\n")

    def record_executed(self, task_id: str) -> bool:
        """Record one execution; returns False if this task had already run."""
        if "/" in task_id or DUP_MARK in task_id or not task_id:
            raise ValueError(f"task id {task_id!r} cannot name a ledger file")
        for n in range(MAX_EXECUTIONS_PER_TASK):
            name = task_id if n == 0 else f"{task_id}{DUP_MARK}{n}"
            try:
                fd = _create_exclusive(self.executed_dir / name)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
            os.close(fd)
            return n == 0
        raise RuntimeError(f"task {task_id} executed more than {MAX_EXECUTIONS_PER_TASK} times")

    def has_run(self, task_id: str) -> bool:
        """Whether ``task_id`` executed at least once."""
        return (self.executed_dir / task_id).exists()

    def published(self) -> list[str]:
        try:
            return [x for x in self.published_path.read_text().splitlines() if x]
        except FileNotFoundError:
            return []

    def executions(self) -> list[str]:
        """One entry (the task id) per recorded execution."""
        try:
            names = os.listdir(self.executed_dir)
        except FileNotFoundError:
            return []
        return [name.split(DUP_MARK, 1)[0] for name in names]

    def execution_times(self) -> list[float]:
        """The wall-clock time of every recorded execution, sorted."""
        times = []
        for path in self.executed_dir.glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                times.append(float(path.read_text().split()[1]))
        return sorted(times)

    def counts(self) -> TaskCounts:
        return tally(self.published(), self.executions())

    def wait_drained(self, timeout: float, poll: float = 0.5) -> TaskCounts:
        """Bounded wait until every published task ran (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        counts = self.counts()
        while counts.lost and time.monotonic() < deadline:
            time.sleep(poll)
            counts = self.counts()
        return counts


def _create_exclusive(path: Path) -> int:
    """``O_CREAT | O_EXCL`` open of ``path``; creates its directory on first use.

    A consumer may start before anyone called :meth:`Ledger.reset` (or the
    caller only named the directory): the first execution makes ``executed/``.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)
