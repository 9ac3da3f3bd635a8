"""Training curves (DVCLive) and throughput, for the training loop.

Curves go to `<live>/plots/metrics/<name>.tsv`, one row per step (x = step), which dvc.yaml
declares as plots; only rank 0 writes them. Throughput counts items over wall time after the
first step (which pays for warm-up and compilation), data loading included.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bertpipe.runtime import Runtime, sync

log = logging.getLogger(__name__)


def open_live(path: str | Path) -> Any:
    """A DVCLive logger writing `<path>/plots/metrics/<name>.tsv` (x = step); no dvc.yaml edits.

    dvclive 3.49 asks git for HEAD when it finds a DVC repo, which fails in a repository without
    commits ("Empty git repo"); then we log the same files without the DVC integration.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(path), save_dvc_exp=False, dvcyaml=None)
    except SCMError as err:
        log.warning("DVCLive cannot use git here (%s); writing curves without DVC", err)

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:  # skip repository discovery; writing files needs none
            pass

    return FilesOnlyLive(dir=str(path), save_dvc_exp=False, dvcyaml=None)


@contextlib.contextmanager
def curves(path: str | Path, rt: Runtime) -> Iterator[Any]:
    """On rank 0, DVCLive writing into `path` while training runs; None on the other ranks.

    Unlike the other outputs the curves are not written atomically: they are meant to be watched
    as they grow, and DVCLive must see the folder by its final name (under `dvc exp run` it leaves
    alone what a stage declares as an output, but would `git add` a temporary folder).
    """
    if not rt.is_main:
        yield None
        return
    with open_live(path) as live:
        yield live


def log_rows(live: Any, first_step: int, names: list[str], rows: np.ndarray) -> None:
    """One DVCLive row per step: rows[i] belongs to step first_step + i."""
    if live is None:
        return
    for i, row in enumerate(rows):
        live.step = first_step + i
        for name, value in zip(names, row, strict=True):
            live.log_metric(name, float(value))


class Throughput:
    """Items per second over the training steps after the first (warm-up, compilation)."""

    def __init__(self, rt: Runtime):
        self.rt, self.items, self.seconds, self._since = rt, 0, 0.0, None

    def start(self) -> None:
        sync(self.rt)
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            sync(self.rt)
            self.seconds += time.perf_counter() - self._since
            self._since = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent in the block out (if the clock is running)."""
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def add(self, items: int) -> None:
        if self._since is not None:
            self.items += items

    def rate(self) -> float | None:
        """Items per second so far (including a running segment); None before a timed step."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        seconds = self.seconds + running
        return round(self.items / seconds, 1) if self.items and seconds > 0 else None
