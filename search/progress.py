"""Live terminal display of a study: trials done, pruned, failed, best value, elapsed time."""

from __future__ import annotations

import math
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class StudyProgress:
    """Two bars: the study's trial budget, and the folds and epochs of the running trial.

    Use as a context manager around the trial loop. On a terminal the bars redraw in place;
    elsewhere (CI, a log file) rich prints nothing until the end. Each finished trial is
    printed as one line, also with ``bars=False``.
    """

    def __init__(self, study_name: str, n_trials: int, counts: dict[str, int], best: float | None,
                 *, console: Console | None = None, n_folds: int = 1, max_epochs: int = 1,
                 bars: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.n_folds, self.max_epochs = n_folds, max_epochs
        self.counts = dict(counts)
        self.best = best
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            disable=not bars,
        )
        done = counts["complete"] + counts["pruned"] + counts["failed"]
        self._study = self._progress.add_task(study_name, total=n_trials, completed=done,
                                              status=self._status())
        self._trial = self._progress.add_task("trial", total=n_folds * max_epochs, visible=False,
                                              status="")

    def __enter__(self) -> "StudyProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def _status(self) -> str:
        best = "—" if self.best is None else f"{self.best:.4f}"
        c = self.counts
        return (f"complete {c['complete']} · pruned {c['pruned']} · failed {c['failed']} · "
                f"best cv val_loss {best}")

    def trial_started(self, number: int) -> None:
        self._progress.reset(self._trial, total=self.n_folds * self.max_epochs, visible=True,
                             description=f"trial {number}", status="")

    def epoch(self, fold: int, epoch: int, step: int, val_loss: float) -> None:
        self._progress.update(
            self._trial, completed=step + 1,
            status=f"fold {fold + 1}/{self.n_folds} · epoch {epoch + 1} · val_loss {val_loss:.4f}",
        )

    def trial_finished(self, number: int, state: str, value: float | None, detail: str = "") -> None:
        key = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(state)
        if key:
            self.counts[key] += 1
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            self.best = value if self.best is None else min(self.best, value)
        self._progress.update(self._trial, visible=False)
        self._progress.update(self._study, advance=1 if key else 0, status=self._status())
        shown = "" if value is None else f" cv val_loss {value:.4f}"
        self._progress.console.print(f"trial {number}: {state.lower()}{shown}{detail}",
                                     highlight=False)


def best_trials_table(rows: list[dict[str, Any]], param_names: list[str], title: str) -> Table:
    """Return a table of the best trials: number, cv val_loss ± std, accuracy, gap, recipe."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("trial", "cv val_loss", "± std", "val acc", "gap", *param_names):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row["number"]),
            f"{row['value']:.4f}",
            f"{row.get('std', float('nan')):.4f}",
            f"{row.get('accuracy', float('nan')):.3f}",
            f"{row.get('gap', float('nan')):.3f}",
            *(_fmt(row["params"].get(name)) for name in param_names),
        )
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "off" if value == 0.0 else f"{value:.2e}" if value < 1e-2 else f"{value:.3g}"
    return str(value)
