"""The study's progress display: bars that move within an epoch, lines where no bar is drawn."""

from __future__ import annotations

import io
import re
import types

import pytest
from rich.console import Console

import search.progress
from search.progress import StudyProgress, _duration

COUNTS = {"complete": 0, "pruned": 0, "failed": 0}


def _progress(*, terminal: bool, log_every: float = 60.0) -> tuple[StudyProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200)
    return StudyProgress("s", 10, COUNTS, None, console=console, n_folds=2, max_epochs=4,
                         log_every=log_every), out


def test_without_a_terminal_the_running_trial_is_logged_at_most_every_log_every() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)
    with progress:
        progress.trial_started(3)
        progress.batch(1, 2, 0.5)
        progress.epoch(1, 2, 6, 1.25)
        progress.trial_finished(3, "COMPLETE", 1.2)
    lines = out.getvalue().splitlines()
    assert lines == ["trial 3: fold 2/2 · epoch 3/4 at 50% · 0s so far",
                     "trial 3: fold 2/2 · epoch 3 · val_loss 1.2500 · 0s so far",
                     "trial 3: complete cv val_loss 1.2000"]


def test_a_job_with_its_own_epochs_and_one_fold() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)
    trial = progress._progress.tasks[1]
    with progress:
        progress.job_started("retraining selected (trial 7)", n_folds=1, max_epochs=3)
        assert trial.total == 3
        progress.batch(0, 1, 0.5)
        progress.job_finished()
        progress.trial_started(8)  # the next trial is back to the study's folds and epochs
        assert trial.total == 8
    assert out.getvalue().splitlines() == [
        "retraining selected (trial 7): epoch 2/3 at 50% · 0s so far"]


def test_without_a_terminal_nothing_but_finished_trials_before_log_every() -> None:
    progress, out = _progress(terminal=False, log_every=3600.0)
    with progress:
        progress.trial_started(0)
        for epoch in range(4):
            progress.batch(0, epoch, 0.5)
            progress.epoch(0, epoch, epoch, 2.0)
        progress.trial_finished(0, "PRUNED", None, " at step 3")
    assert out.getvalue().splitlines() == ["trial 0: pruned at step 3"]


def test_on_a_terminal_the_trial_bar_moves_within_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search.progress, "BATCH_UPDATE_SECONDS", 0.0)
    progress, out = _progress(terminal=True, log_every=0.0)
    trial = progress._progress.tasks[1]
    with progress:
        progress.job_started("baseline none")
        progress.batch(1, 2, 0.25)
        assert trial.completed == pytest.approx(1 * 4 + 2 + 0.25)
        assert trial.description == "baseline none" and trial.visible
        progress.show(types.SimpleNamespace(fold=1, epoch=2, step=6, val_loss=1.5, filled=False))
        assert trial.completed == 7
        # the stand-in report for epochs early stopping skipped moves nothing
        progress.show(types.SimpleNamespace(fold=1, epoch=3, step=7, val_loss=1.5, filled=True))
        assert trial.completed == 7
        progress.job_finished()
        assert not trial.visible
    assert "so far" not in out.getvalue()  # the bars are the display; no log lines


def test_batch_redraws_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search.progress, "BATCH_UPDATE_SECONDS", 3600.0)
    progress, _ = _progress(terminal=True)
    trial = progress._progress.tasks[1]
    with progress:
        progress.trial_started(0)
        progress.batch(0, 0, 0.1)
        progress.batch(0, 0, 0.9)
    assert trial.completed == pytest.approx(0.1)


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.9, "59s"), (75, "1m15s"),
                                          (3700, "1h01m"), (90000, "25h00m")])
def test_duration(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_the_launcher_shows_a_bar_per_running_trial_of_its_workers() -> None:
    progress, out = _progress(terminal=True)  # 2 folds x 4 epochs

    def trial_bars() -> dict:
        return {t.description: t for t in progress._progress.tasks
                if t.description.startswith("trial ")}

    with progress:
        progress.workers({3: ("pid 11", None), 4: ("pid 12", 5)})
        bars = trial_bars()
        assert set(bars) == {"trial 3", "trial 4"}
        assert bars["trial 3"].completed == 0 and bars["trial 4"].completed == 6
        assert bars["trial 4"].fields["status"] == "fold 2/2 · epoch 2/4 · pid 12"
        progress.workers({4: ("pid 12", 3)})  # trial 3 ended; trial 4 at a fold's last epoch
        bars = trial_bars()
        assert set(bars) == {"trial 4"}
        assert bars["trial 4"].fields["status"] == "fold 1/2 · epoch 4/4 · pid 12"
        progress.workers({})
        assert not trial_bars()


def test_off_a_terminal_the_launcher_lists_running_trials_at_most_every_log_every() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)
    with progress:
        progress.workers({3: ("pid 11", 0), 4: ("host-b:12", 7)})
        progress.log_every = 3600.0
        progress.workers({3: ("pid 11", 1)})
    assert out.getvalue().splitlines() == [
        "running: trial 3 fold 1/2 · epoch 1/4; trial 4 fold 2/2 · epoch 4/4"]


def test_the_study_time_left_is_the_mean_trial_duration_times_the_trials_left() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)  # 10 trials
    column = progress._progress.columns[-1]
    study = progress._progress.tasks[0]
    with progress:
        assert progress.time_left() is None
        assert column.render(study).plain == "-:--:--"  # nothing measured yet
        progress.trial_finished(0, "COMPLETE", 1.0, seconds=100.0)
        progress.trial_finished(1, "PRUNED", None, seconds=20.0)  # pruned and failed count too
        progress.trial_finished(2, "FAIL", None, seconds=30.0)
        assert progress.time_left() == pytest.approx(50.0 * 7)
        assert column.render(study).plain == "~0:05:50"
        # in a log, each finished trial's line says it too
        assert out.getvalue().splitlines()[-1] == "trial 2: fail · study: about 5m50s left"
        progress.trial_started(3)  # the running trial's time so far is spent already
        assert 50.0 * 7 - 5 < progress.time_left() <= 50.0 * 7
        progress.epoch(0, 0, 0, 1.5)
    assert re.search(r"· 0s so far · study: about 5m(4\d|50)s left$", out.getvalue())
    # the trial's own bar keeps rich's estimate
    assert column.render(progress._progress.tasks[1]).plain != "~0:05:50"


def test_the_time_left_shares_the_trials_left_among_running_workers() -> None:
    progress, _ = _progress(terminal=True)
    with progress:
        progress.trial_finished(0, "COMPLETE", 1.0, seconds=60.0)
        progress.workers({1: ("pid 11", 0), 2: ("pid 12", None), 3: ("pid 13", 2)})
        assert progress.time_left() == pytest.approx(60.0 * 9 / 3)
        for number in range(1, 10):
            progress.trial_finished(number, "COMPLETE", 1.0, seconds=60.0)
        assert progress.time_left() == 0.0


def test_the_time_left_counts_the_trials_of_a_step_as_trained_together() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)  # 10 trials
    with progress:
        progress.trials_started([0, 1, 2])
        assert progress.time_left() is None
        for number in range(3):  # a step of three: each took the step's 90 s
            progress.trial_finished(number, "COMPLETE", 1.0, seconds=90.0)
        # 7 trials left, 3 at a time: 90 s x 7 / 3, not 90 s x 7
        assert progress.time_left() == pytest.approx(90.0 * 7 / 3)
        progress.trials_started([3, 4, 5])
        assert 90.0 * 7 / 3 - 5 < progress.time_left() <= 90.0 * 7 / 3
        progress.epoch(0, 0, 0, 1.5)
    assert re.search(r"^trials 3, 4, 5: fold 1/2 · epoch 1 · val_loss 1\.5000 · 0s so far · "
                     r"study: about 3m(2\d|30)s left$", out.getvalue(), re.M), out.getvalue()


def test_an_interrupted_trial_says_no_time_left_and_is_not_timed() -> None:
    progress, out = _progress(terminal=False, log_every=0.0)
    with progress:
        progress.trial_finished(0, "COMPLETE", 1.0, seconds=100.0)
        # Ctrl-C 5 s into trial 1: the run is stopping, and 5 s is no trial's duration
        progress.trial_finished(1, "FAIL", None, " (interrupted (Ctrl-C))", seconds=5.0,
                                interrupted=True)
        assert out.getvalue().splitlines()[-1] == "trial 1: fail (interrupted (Ctrl-C))"
        assert progress._durations == [100.0]


def test_the_best_trials_table_says_what_gap_means() -> None:
    from search.progress import best_trials_table

    table = best_trials_table([{"number": 3, "value": 0.1, "std": 0.01, "accuracy": 0.9,
                                "gap": -0.05, "params": {"l2": 1e-4}}], ["l2"], title="best")
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    text = " ".join(out.getvalue().split())  # the note wraps at the table's width
    assert "gap: validation minus training cross-entropy at the best epochs" in text
    assert "dropout and augmentation on" in text
