"""The held-out report: retrain the selected recipe and each baseline, score the held-out split once."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from search.names import BEST_EPOCHS_ATTR, HELDOUT_ATTR
from search.progress import StudyProgress, job
from search.tracking import Tracker
from spaces.strengths import REGULARIZERS
from trainers.fit import ClassWeight, FinalResult, train_final
from trainers.recipe import Recipe



def final_epochs(best_epochs: list[int]) -> int:
    """Epochs to retrain on the whole training split: the folds' mean best epoch count."""
    return max(1, round(sum(e + 1 for e in best_epochs) / len(best_epochs)))


def heldout_report(study: Any, candidates: dict[str, dict[str, Any]], *, train: Any, heldout: Any,
                   models: Any, seed: int, tracker: Tracker, parent_run_id: str, console: Any = None,
                   class_weight: ClassWeight = None,
                   progress: StudyProgress | None = None) -> list[dict[str, Any]]:
    """Retrain every candidate on all of ``train`` and evaluate it once on ``heldout``.

    Args:
        candidates: ``{label: {"recipe": dict, "best_epochs": [...], "cv_val_loss": ...}}``:
            the selected trial and the baselines.
        progress: shows each retraining's epochs.

    Returns:
        One row per candidate (label, recipe, epochs, train/held-out loss, gap, accuracy, CV
        loss); also logged on the parent run as ``heldout_report.md``/``.json`` and
        ``learning_curves.png``, and kept in the study so a rerun reuses it.
    """
    cached: dict[str, dict[str, Any]] = dict(study.user_attrs.get(HELDOUT_ATTR, {}))
    rows = []
    curves: dict[str, dict[str, list[float]]] = {}
    for label, candidate in candidates.items():
        recipe = Recipe.from_dict(candidate["recipe"])
        epochs = final_epochs(candidate[BEST_EPOCHS_ATTR])
        key = json.dumps({"recipe": candidate["recipe"], "epochs": epochs}, sort_keys=True)
        if cached.get(label, {}).get("key") != key:
            if console is not None:
                console.print(f"retraining {label} on all {len(train)} training images for "
                              f"{epochs} epochs, then scoring {len(heldout)} held-out images")
            with job(progress, f"retraining {label}", n_folds=1, max_epochs=epochs) as hooks:
                result: FinalResult = train_final(
                    train, heldout, recipe, models, epochs=epochs, seed=seed,
                    class_weight=class_weight, on_batch=hooks.get("on_batch"))
            cached[label] = {
                "key": key, "epochs": epochs, "train_loss": result.train_loss,
                "heldout_loss": result.heldout_loss, "heldout_accuracy": result.heldout_accuracy,
                "curves": {"train_loss": result.history["cross_entropy"],
                           "heldout_loss": result.history["val_cross_entropy"]},
            }
            study.set_user_attr(HELDOUT_ATTR, cached)
        entry = cached[label]
        curves[label] = entry["curves"]
        rows.append({
            "label": label, "recipe": candidate["recipe"], "epochs": entry["epochs"],
            "cv_val_loss": candidate.get("cv_val_loss"),
            "train_loss": entry["train_loss"], "heldout_loss": entry["heldout_loss"],
            "generalization_gap": entry["heldout_loss"] - entry["train_loss"],
            "heldout_accuracy": entry["heldout_accuracy"],
        })
    _log(rows, curves, tracker, parent_run_id)
    return rows


def report_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The held-out comparison as a terminal table, lowest held-out loss first."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("recipe", "cv val_loss", "epochs", "train loss", "held-out loss", "gap",
                   "held-out acc"):
        table.add_column(column, justify="left" if column == "recipe" else "right", no_wrap=True)
    for row in sorted(rows, key=lambda r: r["heldout_loss"]):
        table.add_row(row["label"], _num(row["cv_val_loss"]), str(row["epochs"]),
                      _num(row["train_loss"]), _num(row["heldout_loss"]),
                      _num(row["generalization_gap"]), _num(row["heldout_accuracy"], 3))
    return table


def report_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The held-out comparison as Markdown, with each recipe spelled out."""
    lines = [f"# {title}", "",
             "Each recipe retrained on the whole training split for its cross-validated number "
             "of epochs, then scored once on the held-out split.", "",
             "| recipe | cv val_loss | epochs | train loss | held-out loss | gap | held-out acc |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["heldout_loss"]):
        lines.append(f"| {r['label']} | {_num(r['cv_val_loss'])} | {r['epochs']} | "
                     f"{_num(r['train_loss'])} | {_num(r['heldout_loss'])} | "
                     f"{_num(r['generalization_gap'])} | {_num(r['heldout_accuracy'], 3)} |")
    lines += ["", "| recipe | " + " | ".join(s.label for s in REGULARIZERS) + " |",
              "| --- |" + " --- |" * len(REGULARIZERS)]
    for r in rows:
        x = r["recipe"]
        lines.append(f"| {r['label']} | "
                     + " | ".join(f"{x[s.name]:.3g}" for s in REGULARIZERS) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Train vs held-out loss per epoch, one panel per recipe, on a shared y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharey=True,
                             squeeze=False)
    for ax, (label, c) in zip(axes.flat, curves.items()):
        epochs = range(1, len(c["train_loss"]) + 1)
        ax.plot(epochs, c["train_loss"], label="train")
        ax.plot(epochs, c["heldout_loss"], label="held-out")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel("cross-entropy")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log(rows: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]],
         tracker: Tracker, parent_run_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "heldout_report.md").write_text(report_markdown(rows, "Held-out report"))
        (out / "heldout_report.json").write_text(json.dumps(rows, indent=2))
        paths = [out / "heldout_report.md", out / "heldout_report.json",
                 plot_learning_curves(curves, out / "learning_curves.png")]
        tracker.log_artifacts(parent_run_id, paths)
    # MLflow metric names allow letters, digits, _ - . : / and spaces only
    tracker.log_metrics(parent_run_id, {
        "heldout_loss/" + re.sub(r"[^\w\-.:/ ]", "", r["label"]).strip(): r["heldout_loss"]
        for r in rows})


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
