"""Live terminal display of a study: trials done, pruned, failed, best value, elapsed time."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, ContextManager, Iterator

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from search.stopping import trainer_hooks

# Where no bar redraws (a log file, a cluster job's output, a worker's log), a line about the
# running trial is printed at most this often, so a long epoch on a slow machine still shows life.
LOG_EVERY_SECONDS = 60.0
# The running trial's bar moves within an epoch, redrawn at most this often.
BATCH_UPDATE_SECONDS = 0.25


class _TimeLeft(TimeRemainingColumn):
    """Rich's time-left column, except where ``left(task id)`` has a text of its own.

    Rich estimates from the bar's recent speed: a study bar that moves once a trial reads
    ``-:--:--`` most of the time, and a few quick pruned trials made it promise minutes where
    twenty were left.
    """

    def __init__(self, left: Callable[[int], str | None]) -> None:
        super().__init__()
        self._left = left

    def render(self, task: Any) -> Text:
        text = self._left(task.id)
        return super().render(task) if text is None else Text(text, style="progress.remaining")


class StudyProgress:
    """Two bars: the study's trial budget, and the folds and epochs of the running trial.

    Use as a context manager around the trial loop. On a terminal the bars redraw in place, and
    the trial's bar moves within an epoch (`batch`), with the time left if it runs all its
    epochs. Elsewhere (a log file, CI, a worker's log) no bar is drawn; instead a line about
    the running trial is printed at most every ``log_every`` seconds. Each finished trial is
    printed as one line in both cases.

    The study's time left (`time_left`) is the mean duration of the trials finished so far
    (complete, pruned and failed alike) times the trials left, shown once a trial has ended.
    """

    def __init__(self, study_name: str, n_trials: int, counts: dict[str, int], best: float | None,
                 *, console: Console | None = None, n_folds: int = 1, max_epochs: int = 1,
                 batched: bool = False, bars: bool = True,
                 log_every: float = LOG_EVERY_SECONDS) -> None:
        self.console = console or Console(stderr=True)
        self.n_folds, self.max_epochs, self.batched = n_folds, max_epochs, batched
        self.counts = dict(counts)
        self.best = best
        self.live = bars and self.console.is_terminal
        self.log_every = log_every
        self._label: str | None = None
        self._folds, self._epochs = n_folds, max_epochs
        self._workers: dict[int, Any] = {}  # running trial number -> its bar (`workers`)
        # monotonic time counts from boot: "long ago" must not depend on the machine's uptime
        self._trial_started = 0.0
        self._last_line = self._last_batch = -math.inf
        self._where = ""
        self.n_trials = n_trials
        self._durations: list[float] = []  # seconds of each trial finished in this run
        self._parallel = 1  # trials running at once (the launcher's workers)
        self._per_step = 1  # trials one worker trains together (`trials_started`)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            _TimeLeft(self._study_time_left),
            console=self.console,
            transient=False,
            disable=not self.live,
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
        self.job_started(f"trial {number}")

    def trials_started(self, numbers: list[int]) -> None:
        """Trials ``numbers`` train together, in one compiled step: one bar for them all,
        and the study's time left counts that many trials done per trial's time."""
        self._per_step = max(self._per_step, len(numbers))
        self.job_started("trials " + ", ".join(str(n) for n in numbers))

    def job_started(self, label: str, *, n_folds: int | None = None,
                    max_epochs: int | None = None) -> None:
        """Show the bar of a training named ``label``: a trial, a baseline, a retraining.

        ``n_folds`` and ``max_epochs`` default to the study's.
        """
        self._label = label
        self._folds = n_folds or self.n_folds
        self._epochs = max_epochs or self.max_epochs
        self._trial_started = self._last_line = time.monotonic()
        self._where = ""
        self._progress.reset(self._trial, total=self._folds * self._epochs, visible=True,
                             description=label, status="")

    def job_finished(self) -> None:
        self._label = None
        self._progress.update(self._trial, visible=False)

    @contextlib.contextmanager
    def job(self, label: str, *, n_folds: int | None = None,
            max_epochs: int | None = None) -> Iterator[dict[str, Any]]:
        """`job_started` for the block, `job_finished` after it, however it ends.

        Yields the trainer's hooks that feed this display, ``on_epoch`` and ``on_batch``; they
        also raise a stop that was asked for and lost (`search.stopping.check_stop`).
        """
        self.job_started(label, n_folds=n_folds, max_epochs=max_epochs)
        try:
            yield trainer_hooks(self)
        finally:
            self.job_finished()

    def epoch(self, fold: int, epoch: int, step: int, val_loss: float) -> None:
        """Epoch ``epoch`` of ``fold`` ended (``step`` counts epochs across folds)."""
        self._where = f"{self._fold(fold)}epoch {epoch + 1} · val_loss {val_loss:.4f}"
        self._progress.update(self._trial, completed=step + 1, status=self._where)
        self._log_if_due()

    def show(self, metrics: Any) -> None:
        """`epoch` for a trainer's `trainers.fit.EpochMetrics` (an ``on_epoch`` callback).

        Skips the stand-in report for the epochs early stopping skipped (``filled``).
        """
        if not metrics.filled:
            self.epoch(metrics.fold, metrics.epoch, metrics.step, metrics.val_loss)

    def batch(self, fold: int, epoch: int, fraction: float) -> None:
        """A training batch of ``epoch`` of ``fold`` begins, ``fraction`` of the epoch done.

        Called before every batch (`trainers.fit.OnBatch`); cheap unless a redraw is due.
        """
        now = time.monotonic()
        if now - self._last_batch < BATCH_UPDATE_SECONDS:
            return
        self._last_batch = now
        if self.live:
            self._progress.update(self._trial, completed=fold * self._epochs + epoch + fraction)
        elif now - self._last_line >= self.log_every:
            self._where = (f"{self._fold(fold)}epoch {epoch + 1}/{self._epochs} "
                           f"at {100 * fraction:.0f}%")
            self._log_if_due()

    def workers(self, running: dict[int, tuple[str, int | None]]) -> None:
        """Show the trials other processes are running: ``{number: (worker, last step)}``.

        The launcher calls this with what the storage holds, about once a second: a bar per
        running trial, moved at the end of every epoch (``step`` counts epochs across folds, as
        trials report them). Off a terminal, one line lists them at most every ``log_every``.
        """
        for number in list(self._workers):
            if number not in running:
                self._progress.remove_task(self._workers.pop(number))
        where = {}
        for number, (worker, step) in sorted(running.items()):
            done = 0 if step is None else step + 1
            fold, epoch = divmod(done, self.max_epochs) if done else (0, 0)
            if done and epoch == 0:  # a fold's last epoch: show it, not the next fold's 0
                fold, epoch = fold - 1, self.max_epochs
            where[number] = f"fold {fold + 1}/{self.n_folds} · epoch {epoch}/{self.max_epochs}"
            if number not in self._workers:
                self._workers[number] = self._progress.add_task(
                    f"trial {number}", total=self.n_folds * self.max_epochs, status="")
            self._progress.update(self._workers[number], completed=done,
                                  status=f"{where[number]} · {worker}")
        self._parallel = max(1, len(running))
        now = time.monotonic()
        if not self.live and where and now - self._last_line >= self.log_every:
            self._last_line = now
            self.console.print("running: " + "; ".join(
                f"trial {n} {w}" for n, w in where.items()) + self._left_in_log(), highlight=False)

    def _fold(self, fold: int) -> str:
        return f"fold {fold + 1}/{self._folds} · " if self._folds > 1 else ""

    def _log_if_due(self) -> None:
        now = time.monotonic()
        if self.live or self._label is None or now - self._last_line < self.log_every:
            return
        self._last_line = now
        elapsed = _duration(now - self._trial_started)
        self.console.print(f"{self._label}: {self._where} · {elapsed} so far{self._left_in_log()}",
                           highlight=False)

    def time_left(self) -> float | None:
        """Seconds until the study's budget is spent, or None before a trial has finished.

        The mean duration of the trials finished in this run, whatever their outcome (a
        pruned trial is short, a failed one may be), times the trials left, shared among the
        trials running at once (the workers' trials, each worker's trials of one step
        together); less what the running trial has already taken.
        """
        if not self._durations:
            return None
        done = self.counts["complete"] + self.counts["pruned"] + self.counts["failed"]
        left = max(0, self.n_trials - done)
        mean = sum(self._durations) / len(self._durations)
        seconds = mean * left / (self._parallel * self._per_step)
        if self._label is not None and self._label.startswith(("trial ", "trials ")):
            seconds -= time.monotonic() - self._trial_started
        return max(0.0, seconds) if left else 0.0

    def _study_time_left(self, task_id: int) -> str | None:
        if task_id != self._study:
            return None
        seconds = self.time_left()
        if seconds is None:
            return "-:--:--"
        hours, rest = divmod(round(seconds), 3600)
        return f"~{hours}:{rest // 60:02d}:{rest % 60:02d}"

    def _left_in_log(self) -> str:
        seconds = self.time_left()
        return "" if seconds is None else f" · study: about {_duration(round(seconds))} left"

    def trial_finished(self, number: int, state: str, value: float | None, detail: str = "", *,
                       seconds: float | None = None, interrupted: bool = False) -> None:
        """Count a finished trial and print its line; ``seconds`` (start to end, as the
        storage recorded it) feeds `time_left`, unless the trial was ``interrupted`` (cut
        short by a stop: its seconds say nothing of a trial's, and no time is left to tell)."""
        key = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(state)
        if key:
            self.counts[key] += 1
            if seconds is not None and not interrupted:
                self._durations.append(seconds)
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            self.best = value if self.best is None else min(self.best, value)
        self.job_finished()
        self._progress.update(self._study, advance=1 if key else 0, status=self._status())
        shown = "" if value is None else f" cv val_loss {value:.4f}"
        # in a log, where no bar shows it, the study's time left ends the line: a trial pruned
        # within a minute prints no "running" line, and most of a search's trials may be such
        left = (self._left_in_log() if not self.live and not interrupted and self.time_left()
                else "")
        self._progress.console.print(f"trial {number}: {state.lower()}{shown}{detail}{left}",
                                     highlight=False)


def job(progress: StudyProgress | None, label: str, **sizes: int) -> ContextManager[dict[str, Any]]:
    """`StudyProgress.job`, or nothing shown and no hooks when ``progress`` is None."""
    return progress.job(label, **sizes) if progress is not None else contextlib.nullcontext({})


def _duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# what the best trials table's "gap" is, printed under it
GAP_NOTE = ("gap: validation minus training cross-entropy at the best epochs; the training loss "
            "is measured with dropout and augmentation on, so a regularized recipe's gap is "
            "often negative")


def best_trials_table(rows: list[dict[str, Any]], param_names: list[str], title: str) -> Table:
    """Return a table of the best trials: number, cv val_loss ± std, accuracy, gap, recipe."""
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=GAP_NOTE, caption_justify="left")
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
