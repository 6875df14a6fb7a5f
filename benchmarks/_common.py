"""Shared helpers of the benchmarks: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, str]:
    """Where a figure was measured: CPU, cores, GPU if any, Keras backend and versions."""
    from search.recipe_file import package_versions

    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import subprocess

        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if gpu:
            info["gpu"] = gpu.replace("\n", ", ")
    except (OSError, subprocess.SubprocessError):
        pass
    info.update({f"version.{k}": v for k, v in package_versions().items()})
    return info


def study_arguments(parser, *, trials: int, epochs: int, folds: int) -> None:  # noqa: ANN001
    """Add the options every study benchmark shares: --study, --trials, --epochs, --folds,
    --data-dir (with this benchmark's defaults)."""
    parser.add_argument("--study", default="digits")
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--folds", type=int, default=folds)
    parser.add_argument("--data-dir")


def write_result(name: str, result: dict, markdown: str) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under benchmarks/results/ (or $BENCH_OUT)."""
    out = Path(os.environ.get("BENCH_OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    path = out / f"{name}.md"
    path.write_text(markdown)
    return path


def machine_table(info: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    return f"| machine | |\n| --- | --- |\n{rows}\n"


def trial_overheads(trials: list) -> dict[str, float | None]:
    """Median time to the first training step, leaving out each worker's first trial.

    ``first_step_seconds``: a trial's start to its first step (target: at most 1 s on a GPU
    after a worker's first trial, which pays the worker's one compilation);
    ``later_folds_first_step_seconds``: the same from each later fold's start.
    """
    from search.names import FIRST_STEP_SECONDS, LATER_FIRST_STEP_SECONDS, WORKER_ATTR

    by_worker: dict[str, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if FIRST_STEP_SECONDS in t.user_attrs:
            by_worker.setdefault(t.user_attrs.get(WORKER_ATTR, ""), []).append(t)
    later = [t for runs in by_worker.values() for t in runs[1:]]
    out: dict[str, float | None] = {}
    for key in (FIRST_STEP_SECONDS, LATER_FIRST_STEP_SECONDS):
        values = [t.user_attrs[key] for t in later if key in t.user_attrs]
        out[f"median_{key}"] = statistics.median(values) if values else None
    return out
