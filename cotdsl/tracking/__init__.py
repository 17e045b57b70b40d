"""Experiment tracking: `cotdsl run SPEC --log wandb|tensorboard|mlflow` and `cotdsl report RUN
--log ...` send a finished run folder to W&B, TensorBoard or MLflow (docs/tracking.md).

Logging happens after the run, from the run folder's files (`base.read_run`), so it works for
every executor, detached Slurm runs included, and the stage code knows nothing of it. Each
backend lives in its own module, imported only when asked for (none imports torch).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from cotdsl.errors import CotError, did_you_mean

# name -> (module, class, the modules it needs)
BACKENDS = {"wandb": ("to_wandb", "WandbTracker", ("wandb",)),
            "tensorboard": ("to_tensorboard", "TensorBoardTracker", ("tensorboard",)),
            "mlflow": ("to_mlflow", "MlflowTracker", ("mlflow",))}
PIP = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "sqlalchemy": "sqlalchemy",
       "alembic": "alembic"}


def backends(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """`--log wandb --log tensorboard,mlflow` -> ("wandb", "tensorboard", "mlflow"), each checked."""
    values = [values] if isinstance(values, str) else values or []
    names = [v.strip().lower() for value in values for v in value.split(",") if v.strip()]
    for n in names:
        if n not in BACKENDS:
            raise CotError.one(f"--log: unknown tracker {n!r}", expected=list(BACKENDS), hint=did_you_mean(n, BACKENDS))
    return tuple(dict.fromkeys(names))


def needed(name: str) -> tuple[str, ...]:
    """The modules backend `name` imports; MLflow's own store (a SQLite file, the default unless
    MLFLOW_TRACKING_URI names a server) also needs sqlalchemy and alembic."""
    mods = BACKENDS[name][2]
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if name == "mlflow" and not uri.startswith(("http:", "https:", "databricks")):
        mods += ("sqlalchemy", "alembic")
    return mods


def require(names) -> None:
    """Fail at once (before any job runs) when a backend's library is not installed."""
    for n in backends(names):
        missing = [m for m in needed(n) if importlib.util.find_spec(m) is None]
        if missing:
            pkgs = " ".join(PIP[m] for m in missing)
            raise CotError.one(f"--log {n}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                               f"pip install {pkgs} (or pip install 'cotdsl[track]')")


def log_run(run_dir: Path, names: tuple[str, ...], console) -> None:
    """Send the run folder `run_dir` to each tracker in `names`; print where each went."""
    from .base import read_run

    names = backends(names)
    if not names:
        return
    require(names)
    run = read_run(Path(run_dir))
    for n in names:
        module, cls, _ = BACKENDS[n]
        try:
            tracker = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(run)
            try:
                for job in run.jobs:
                    tracker.job(job)
                tracker.summary()
            finally:
                tracker.close()
        except (CotError, KeyboardInterrupt):
            raise
        except Exception as e:  # the tracker's library failed (a server, a locked store): results are safe
            raise CotError.one(f"--log {n}: {type(e).__name__}: {e}",
                               hint=f"the run folder is complete; log it again with "
                                    f"`cotdsl report {run_dir} --log {n}`")
        console.print(f"{n}: {len(run.jobs)} training run(s) and the summary of {run.experiment} "
                      f"-> {tracker.where()}", style="dim", markup=False, soft_wrap=True)
