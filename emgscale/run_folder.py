"""A run folder: the one place that knows where a training run keeps its files.

A run folder is a training run's ``run.out_dir``::

    <out_dir>/
      config.yaml            the resolved config (written at start)
      checkpoints/last.pt    the newest checkpoint (every ``run.ckpt_every_steps``, each validation, the end)
      checkpoints/best.pt    the checkpoint with the best validation score
      metrics.jsonl, metrics.csv, tb/    what was logged
      swad/                  SWAD/SWA segments and their index
      ray/, ray_result.json  Ray Train storage (default) and what the driver learnt
      timings.json           where the run's wall time went (``TrainResult.timings``), written at the end

Two rules live here and nowhere else:

* **A folder means its ``last.pt``** (:func:`checkpoint_file`): wherever a checkpoint is taken, a
  checkpoint folder (``<run>/checkpoints``, a Ray checkpoint folder) or a run folder stands for the
  ``last.pt`` inside it.
* **The resume rule** (:meth:`RunFolder.resume_from`): ``resume=True`` continues from the folder's own
  ``last.pt`` when there is one (else the run starts fresh), ``resume=PATH`` from that checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LAST, BEST = "last.pt", "best.pt"
#: What a run writes into its folder (``run.overwrite`` removes these, and nothing else, before a new run).
RUN_FILES = ("checkpoints", "tb", "metrics.jsonl", "metrics.csv", "config.yaml", "ray_result.json", "ray", "swad",
             "timings.json")
#: The files whose presence means the folder holds a run that a plain new run must not replace.
_RUN_MARKS = ("checkpoints/" + LAST, "checkpoints/" + BEST)


def checkpoint_file(path: "str | Path") -> Path:
    """The checkpoint file ``path`` stands for: a file itself, a folder its ``last.pt``.

    A folder is a checkpoint folder (``<folder>/last.pt``) or a run folder (``<folder>/checkpoints/last.pt``).
    The path returned need not exist (the caller says what is missing).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    run_last = RunFolder(path).last
    return run_last if not (path / LAST).exists() and run_last.is_file() else path / LAST


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created by naming them)."""

    root: Path

    def __init__(self, root: "str | Path") -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON row per logged step and per validation."""
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def swad(self) -> Path:
        return self.root / "swad"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage when ``run.storage_path`` is not set."""
        return self.root / "ray"

    @property
    def ray_result(self) -> Path:
        return self.root / "ray_result.json"

    @property
    def timings(self) -> Path:
        """``timings.json``: seconds per part of the run (:mod:`emgscale.train.timings`)."""
        return self.root / "timings.json"

    def checkpoints_found(self) -> list[str]:
        """The checkpoints the folder holds (``checkpoints/last.pt``, ``checkpoints/best.pt``): a run that
        a new run must not silently replace. A folder with logs and no checkpoint (a run stopped before its
        first checkpoint) holds nothing to continue: a new run starts it cleanly."""
        return [name for name in _RUN_MARKS if (self.root / name).exists()]

    def logs_found(self) -> list[str]:
        """The run files present other than checkpoints (what an interrupted run logged)."""
        return [name for name in RUN_FILES if name != "checkpoints" and (self.root / name).exists()]

    def resume_from(self, resume: "bool | str | Path | None") -> Path | None:
        """The checkpoint a run continues from, or None for a fresh start.

        Args:
            resume: False/None (fresh), True (this folder's ``last.pt`` when it exists, else fresh), or a
                checkpoint file or folder (:func:`checkpoint_file`).

        Raises:
            FileNotFoundError: ``resume`` is a path with no checkpoint there.
        """
        if resume is False or resume is None:
            return None
        if resume is True:
            return self.last if self.last.is_file() else None
        path = checkpoint_file(resume)
        if not path.is_file():
            raise FileNotFoundError(f"{resume}: no checkpoint to resume from (expected a file, or a folder "
                                    f"with {LAST} or checkpoints/{LAST})")
        return path

    def remove_run_files(self, keep_ray_storage: bool = False) -> None:
        """Delete every run file (:data:`RUN_FILES`) and nothing else; ``keep_ray_storage`` spares ``ray/``."""
        import shutil

        for name in RUN_FILES:
            p = self.root / name
            if name == "ray" and keep_ray_storage:
                continue
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def remove_stale_temps(self) -> list[Path]:
        """Delete the temporary files an atomic write left when its process was killed mid-write
        (``.last.pt.*.tmp`` and friends, :func:`emgscale.common.atomic_path`); call it before the run writes.

        Returns:
            The files removed.
        """
        gone = []
        for folder in (self.root, self.checkpoints, self.swad):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        gone.append(p)
        return gone
