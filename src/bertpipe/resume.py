"""Resume checkpoints: a killed training stage goes on from its last one, to the same bytes.

Every `every` steps the loop saves everything the rest of the run depends on: the weights, the
optimiser and schedule state, the random-number state (dropout), the stats of the steps done
(the metrics average over all of them, and the curves are replayed from them) and the figures
of the epochs and evaluations done. Nothing a stage
computes depends on whether or where it was saved, so a resumed run ends with the same bytes as
an uninterrupted one.

The checkpoints live beside the stage's output (`data/.pretrain.resume/` for `data/pretrain`),
where DVC, which deletes a stage's outputs before running it, leaves them alone. Each holds the
*fingerprint* of the run: the params (on the hf_bert route also the thread count and the
transformers version), the torch version, the inputs' bytes (the stage script among them) and
the package's code. A checkpoint with another fingerprint is never resumed (it is deleted).
The stage removes the folder once its outputs are written. Files are written atomically (a
kill mid-save keeps the previous one) and loaded with `weights_only=True`, so reading one runs
no code. Under torchrun every rank keeps its own (dropout differs per rank) and the ranks
resume only from a step they all have; a checkpoint resumes only in as many processes as saved
it (the dropout masks depend on that).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertpipe import artifacts
from bertpipe.runtime import Runtime, reduce_sum

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent  # the package: its code is part of every fingerprint


@dataclass
class TrainState:
    """Where a run stands: steps done, each step's stats, each epoch's and each evaluation's
    (step, figures)."""

    step: int = 0
    history: list[list[float]] = field(default_factory=list)
    epochs: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def fingerprint(params: dict[str, Any], inputs: list[str | Path]) -> str:
    """SHA-1 of `params` (the stage's params section, and whatever else its bits depend on),
    the torch version, every byte of the input files (or folders; the stage script is one) and
    the package code. The thread count changes no bit of this pipeline's own model, so it is in
    `params` only on the hf_bert route, with the transformers version: transformers' kernels
    give other bits at another count."""
    run = {"params": params, "torch": torch.__version__}
    digest = hashlib.sha1(json.dumps(run, sort_keys=True, default=str).encode())
    for root in [*map(Path, inputs), SOURCE]:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if root == SOURCE and path.suffix != ".py":
                continue
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(artifacts.sha1_of_file(path).encode())
    return digest.hexdigest()


class Resume:
    """The resume checkpoints of one stage run, in `folder`, for one fingerprint."""

    def __init__(self, folder: str | Path, fingerprint: str, every: int) -> None:
        self.folder, self.fingerprint, self.every = Path(folder), fingerprint, every

    @classmethod
    def beside(cls, out: str | Path, fingerprint: str, every: int) -> Resume:
        out = Path(out)
        return cls(out.with_name(f".{out.name}.resume"), fingerprint, every)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: TrainState, model: nn.Module, opt: torch.optim.Optimizer,
             schedule: Any, rt: Runtime) -> None:  # fmt: skip
        rng = {"cpu": torch.get_rng_state()}
        if rt.cuda:
            rng["cuda"] = torch.cuda.get_rng_state(rt.device)
        blob = {
            "fingerprint": self.fingerprint,
            "world_size": rt.world_size,
            "step": state.step,
            "history": state.history,
            "epochs": [[step, result] for step, result in state.epochs],
            "evals": [[step, result] for step, result in state.evals],
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng,
        }
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        artifacts.atomic_write_bytes(self._file(rt), buffer.getvalue())
        log.info("saved a resume checkpoint at step %d in %s", state.step, self.folder)

    def load(self, model: nn.Module, opt: torch.optim.Optimizer, schedule: Any,
             rt: Runtime) -> TrainState | None:  # fmt: skip
        """Restore the last checkpoint of this fingerprint; None (start afresh) if there is none."""
        blob = self._read(rt)
        step = blob["step"] if blob else -1
        agreed = reduce_sum(torch.tensor([step, -step], device=rt.device), rt).tolist()
        if blob is None or agreed != [step * rt.world_size, -step * rt.world_size]:
            return None  # some rank has no checkpoint, or another step: start afresh
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        schedule.load_state_dict(blob["schedule"])
        torch.set_rng_state(blob["rng"]["cpu"])
        if rt.cuda:
            torch.cuda.set_rng_state(blob["rng"]["cuda"], rt.device)
        log.info("resuming from step %d (checkpoint in %s)", step, self.folder)
        epochs, evals = ([(int(s), dict(result)) for s, result in blob[key]]
                         for key in ("epochs", "evals"))  # fmt: skip
        return TrainState(step, [list(row) for row in blob["history"]], epochs, evals)

    def clear(self) -> None:
        """The run is done: its checkpoints are of no further use."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _file(self, rt: Runtime) -> Path:
        return self.folder / f"rank{rt.rank}.pt"

    def _read(self, rt: Runtime) -> dict | None:
        path = self._file(rt)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file is only a lost head start
            log.warning("ignoring the unreadable resume checkpoint %s (%s)", path, err)
            return None
        if blob.get("fingerprint") != self.fingerprint:
            log.info("params, inputs or code changed since %s was saved: starting afresh", path)
            path.unlink(missing_ok=True)
            return None
        if blob.get("world_size") != rt.world_size:
            log.info("%s was saved by %s processes, this run has %d: starting afresh", path,
                     blob.get("world_size"), rt.world_size)  # fmt: skip
            path.unlink(missing_ok=True)
            return None
        return blob
