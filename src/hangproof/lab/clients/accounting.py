"""Task accounting: published, executed, executed twice, lost.

Every fault scenario asks the same question: did any task vanish or run twice?
A :class:`Ledger` is a directory shared by the producer and all workers:

- ``published.log``: one task id per line, appended by the single producer
  after the broker confirmed the publish;
- ``executed/``: one file per execution, created with ``O_CREAT | O_EXCL`` so
  that concurrent worker processes never race on a shared file. The first
  execution of a task creates ``<id>``; any later one creates ``<id>.dup-<n>``.

    >>> ledger = Ledger(Path("/tmp/hp-ledger")); ledger.reset()  # doctest: +SKIP
    >>> ledger.record_published("t1"); ledger.record_executed("t1")  # doctest: +SKIP
    >>> ledger.counts().to_dict()  # doctest: +SKIP
    {'published': 1, 'executed': 1, 'duplicates': 0, 'lost': 0, 'unexpected': 0}

The fault matrix's consumers (Celery cells through ``hangproof.guard.sample_app``,
kombu and aio-pika through :mod:`hangproof.lab.clients.matrix_clients`) keep
the same account in one file instead: one ``<key> <pid>`` line per execution
(:func:`append_key`, read back by :func:`ledger_keys`).
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
                fd = os.open(self.executed_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
            os.close(fd)
            return n == 0
        raise RuntimeError(f"task {task_id} executed more than {MAX_EXECUTIONS_PER_TASK} times")

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


def append_key(path: str | os.PathLike[str], key: str) -> None:
    """Append ``<key> <pid>`` to the line ledger ``path``.

    One ``O_APPEND`` write of one short line: atomic across processes, so every
    worker process of every client appends to the same file without a lock.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def ledger_keys(path: Path) -> list[str]:
    """The keys of a line ledger, one per execution, in order; [] if there is none yet."""
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
