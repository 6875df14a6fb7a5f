"""The held-out report: retrain the selected recipe and each baseline, score the held-out split once,
and say which differences are larger than the noise."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from search.names import BEST_EPOCHS_ATTR, CV_LOSS, FOLD_LOSSES_ATTR, HELDOUT_ATTR, RECIPE_ATTR
from search.progress import StudyProgress, job
from search.stats import paired_bootstrap, paired_folds, rank_agreement, verdict
from search.tracking import Tracker
from spaces.strengths import REGULARIZERS
from trainers.fit import ClassWeight, FinalResult, train_final

# the paired bootstrap over held-out images: resamples, and its seed beside the study's
BOOTSTRAP_RESAMPLES = 10_000
import numpy as np

from trainers.recipe import Recipe


def final_epochs(best_epochs: list[int]) -> int:
    """Epochs to retrain on the whole training split: the folds' mean best epoch count."""
    return max(1, round(sum(e + 1 for e in best_epochs) / len(best_epochs)))


def heldout_report(study: Any, candidates: dict[str, dict[str, Any]], *, train: Any, heldout: Any,
                   models: Any, seed: int, tracker: Tracker, parent_run_id: str, console: Any = None,
                   class_weight: ClassWeight = None, progress: StudyProgress | None = None,
                   warnings: list[str] = ()) -> dict[str, Any]:
    """Retrain every candidate on all of ``train`` and evaluate it once on ``heldout``.

    Args:
        candidates: ``{label: {"recipe": dict, "best_epochs": [...], "cv_val_loss": ...,
            "fold_val_losses": [...]}}``: the selected trial first, then other trials and the
            baselines (labels starting ``baseline``).
        progress: shows each retraining's epochs.
        warnings: lines on what in the study's design limits the answer.

    Returns:
        ``{"rows": [...], "comparisons": [...], "agreement": {...}, "warnings": [...]}``: one
        row per candidate (label, recipe, epochs, train/held-out loss, gap, accuracy, CV loss);
        the selected recipe against each baseline, paired over folds and over held-out images
        (`compare`); the rank agreement of CV and held-out loss. Also logged on the parent run
        as ``heldout_report.md``/``.json`` and ``learning_curves.png``, and kept in the study
        so a rerun reuses the retrainings.
    """
    cached: dict[str, dict[str, Any]] = dict(study.user_attrs.get(HELDOUT_ATTR, {}))
    rows = []
    curves: dict[str, dict[str, list[float]]] = {}
    for label, candidate in candidates.items():
        recipe = Recipe.from_dict(candidate[RECIPE_ATTR])
        epochs = final_epochs(candidate[BEST_EPOCHS_ATTR])
        key = json.dumps({"recipe": candidate[RECIPE_ATTR], "epochs": epochs}, sort_keys=True)
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
                # per image, in the held-out split's order: the paired bootstrap's pairs
                "heldout_losses": [round(float(v), 6) for v in result.heldout_losses],
                "heldout_correct": [bool(v) for v in result.heldout_correct],
                "curves": {"train_loss": result.history["cross_entropy"],
                           "heldout_loss": result.history["val_cross_entropy"]},
            }
            study.set_user_attr(HELDOUT_ATTR, cached)
        entry = cached[label]
        curves[label] = entry["curves"]
        rows.append({
            "label": label, "recipe": candidate[RECIPE_ATTR], "epochs": entry["epochs"],
            "cv_val_loss": candidate.get(CV_LOSS),
            "train_loss": entry["train_loss"], "heldout_loss": entry["heldout_loss"],
            "generalization_gap": entry["heldout_loss"] - entry["train_loss"],
            "heldout_accuracy": entry["heldout_accuracy"],
            FOLD_LOSSES_ATTR: candidate.get(FOLD_LOSSES_ATTR),
            "heldout_losses": entry.get("heldout_losses"),
            "heldout_correct": entry.get("heldout_correct"),
        })
    report = {"rows": rows, **compare(rows, seed=seed), "warnings": list(warnings)}
    _log(report, curves, tracker, parent_run_id)
    return report


def compare(rows: list[dict[str, Any]], *, seed: int) -> dict[str, Any]:
    """The selected recipe (the first row) against each baseline, and CV → held-out transfer.

    Each comparison pairs the same folds (`search.stats.paired_folds` on the best-epoch
    validation losses) and the same held-out images (`search.stats.paired_bootstrap` on
    per-image loss and correctness, ``BOOTSTRAP_RESAMPLES`` resamples seeded with ``seed``).
    The agreement is Spearman's rank correlation of CV and held-out loss over all rows.

    Returns:
        ``{"comparisons": [{baseline, folds, heldout_loss, heldout_accuracy, words}],
        "agreement": {...}}``; ``words`` are the plain sentences the report prints.
    """
    selected, others = rows[0], rows[1:]
    comparisons = []
    for row in (r for r in others if r["label"].startswith("baseline")):
        what = row["label"]
        entry: dict[str, Any] = {"baseline": what.removeprefix("baseline ").strip(), "words": []}
        if selected.get(FOLD_LOSSES_ATTR) and row.get(FOLD_LOSSES_ATTR):
            diff = paired_folds(selected[FOLD_LOSSES_ATTR], row[FOLD_LOSSES_ATTR])
            entry["folds"] = diff.to_dict()
            entry["words"].append(verdict(diff, what))
        if selected.get("heldout_losses") and row.get("heldout_losses"):
            loss = paired_bootstrap(np.asarray(selected["heldout_losses"]),
                                    np.asarray(row["heldout_losses"]),
                                    n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
            accuracy = paired_bootstrap(
                np.asarray(selected["heldout_correct"], float),
                np.asarray(row["heldout_correct"], float), n_resamples=BOOTSTRAP_RESAMPLES,
                seed=seed, better="higher", metric="held-out accuracy")
            entry.update(heldout_loss=loss.to_dict(), heldout_accuracy=accuracy.to_dict())
            entry["words"] += [verdict(loss, what), verdict(accuracy, what)]
        comparisons.append(entry)
    scored = [r for r in rows if r.get("cv_val_loss") is not None]
    agreement = rank_agreement([r["cv_val_loss"] for r in scored],
                               [r["heldout_loss"] for r in scored])
    return {"comparisons": comparisons, "agreement": agreement.to_dict()}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report's findings in words: the selected recipe against each baseline, whether the
    CV ranking carried over to held-out data, and the study design's limits."""
    selected = report["rows"][0]["label"]
    lines = [f"{selected} {words}" for c in report["comparisons"] for words in c["words"]]
    lines.append(f"CV loss vs held-out loss: {report['agreement']['verdict']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines


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


def report_markdown(report: dict[str, Any], title: str) -> str:
    """The held-out comparison as Markdown: the table, the findings in words, each recipe."""
    rows = report["rows"]
    lines = [f"# {title}", "",
             "Each recipe retrained on the whole training split for its cross-validated number "
             "of epochs, then scored once on the held-out split. The CV loss beside the held-out "
             "loss shows the optimism of selecting the best of many trials.", "",
             "| recipe | cv val_loss | epochs | train loss | held-out loss | gap | held-out acc |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["heldout_loss"]):
        lines.append(f"| {r['label']} | {_num(r['cv_val_loss'])} | {r['epochs']} | "
                     f"{_num(r['train_loss'])} | {_num(r['heldout_loss'])} | "
                     f"{_num(r['generalization_gap'])} | {_num(r['heldout_accuracy'], 3)} |")
    lines += ["", "## Is the difference real?", ""]
    lines += [f"- {line}" for line in report_lines(report)]
    lines += ["", f"Folds: paired t-interval over the study's folds (best-epoch validation loss). "
              f"Held-out: paired bootstrap over held-out images, {BOOTSTRAP_RESAMPLES} "
              f"resamples. 95% intervals of selected minus baseline."]
    lines += ["", "| recipe | " + " | ".join(s.label for s in REGULARIZERS) + " |",
              "| --- |" + " --- |" * len(REGULARIZERS)]
    for r in rows:
        x = r["recipe"]
        lines.append(f"| {r['label']} | "
                     # a recipe stored before a regularizer existed had it off
                     + " | ".join(f"{x.get(s.name, s.off):.3g}" for s in REGULARIZERS) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Train vs held-out loss per epoch, one panel per recipe, on a shared y axis."""
    # matplotlib: as in `search.plots.save_study_plots`, only when the report is drawn
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


def _log(report: dict[str, Any], curves: dict[str, dict[str, list[float]]],
         tracker: Tracker, parent_run_id: str) -> None:
    rows = report["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "heldout_report.md").write_text(report_markdown(report, "Held-out report"))
        (out / "heldout_report.json").write_text(json.dumps(report, indent=2))
        paths = [out / "heldout_report.md", out / "heldout_report.json",
                 plot_learning_curves(curves, out / "learning_curves.png")]
        tracker.log_artifacts(parent_run_id, paths)
    # MLflow metric names allow letters, digits, _ - . : / and spaces only
    tracker.log_metrics(parent_run_id, {
        "heldout_loss/" + re.sub(r"[^\w\-.:/ ]", "", r["label"]).strip(): r["heldout_loss"]
        for r in rows})


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
