"""The fold mode of a study: folds one after the other, or batched in one compiled step.

The pruner must see the same steps and values from batched folds as from sequential ones
(`search.worker.InFoldOrder`), and a batched study runs end to end on real stores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.config import build_config
from search.names import FOLD_LOSSES_ATTR
from search.study import make_pruner
from search.worker import InFoldOrder, pruner_reports
from spaces.strengths import STRENGTHS
from trainers.fit import EpochMetrics

EPOCHS = 4


def _metrics(fold: int, epoch: int, best: float, filled: bool = False) -> EpochMetrics:
    return EpochMetrics(fold=fold, epoch=epoch, step=fold * EPOCHS + epoch, train_loss=1.0,
                        val_loss=best, val_accuracy=0.5, best_val_loss=best, filled=filled)


def _pruner_sees(reports: list[EpochMetrics], batched: bool,
                 batched_pruning: str = "fold-end") -> list[tuple[int, float]]:
    """(step, value) pairs the objective reports to Optuna (`search.worker.pruner_reports`)."""
    config = build_config("digits", n_folds=len(CURVES), max_epochs=EPOCHS,
                          fold_mode="batched" if batched else "sequential",
                          batched_pruning=batched_pruning)
    to_pruner = pruner_reports(config)
    return [pair for m in reports for pair in to_pruner(m)]


# best-so-far curves of three folds; fold 1 stops early after epoch 1, fold 2 trains them all
CURVES = {0: [2.0, 1.5, 1.2, 1.1], 1: [1.8, 1.6], 2: [2.2, 1.9, 1.4, 1.3]}


def _sequential() -> list[EpochMetrics]:
    out = []
    for fold, curve in CURVES.items():
        out += [_metrics(fold, e, v) for e, v in enumerate(curve)]
        if len(curve) < EPOCHS:
            out.append(_metrics(fold, EPOCHS - 1, curve[-1], filled=True))
    return out


def _batched() -> list[EpochMetrics]:
    """The same folds trained together: epoch-major, an early stop filled when it happens."""
    out = []
    for epoch in range(EPOCHS):
        for fold, curve in CURVES.items():
            if epoch < len(curve):
                out.append(_metrics(fold, epoch, curve[epoch]))
                if epoch == len(curve) - 1 < EPOCHS - 1:
                    out.append(_metrics(fold, EPOCHS - 1, curve[-1], filled=True))
    return out


def test_batched_folds_report_to_the_pruner_what_sequential_folds_report_at_fold_ends() -> None:
    sequential = _pruner_sees(_sequential(), batched=False)
    batched = _pruner_sees(_batched(), batched=True)
    # fold 0's epochs as they come, then every fold's end, in fold order, with the same values
    fold_ends = [(step, value) for step, value in sequential
                 if step < EPOCHS or step % EPOCHS == EPOCHS - 1]
    assert batched == fold_ends
    assert [s for s, _ in batched] == [0, 1, 2, 3, 7, 11]
    assert batched[-1][1] == pytest.approx((1.1 + 1.6 + 1.3) / 3)


def test_batched_folds_judged_by_epoch_report_every_folds_mean_at_each_epoch() -> None:
    seen = _pruner_sees(_batched(), batched=True, batched_pruning="epoch")
    # fold 1 stopped after epoch 1 and counts with its best, 1.6, from then on
    means = [(2.0 + 1.8 + 2.2) / 3, (1.5 + 1.6 + 1.9) / 3, (1.2 + 1.6 + 1.4) / 3,
             (1.1 + 1.6 + 1.3) / 3]
    assert [s for s, _ in seen] == [0, 1, 2, 3, 7, 11]
    assert [v for _, v in seen] == pytest.approx(means + [means[-1]] * 2)
    # the last fold-end value is the trial's CV loss, as with sequential folds
    assert seen[-1][1] == pytest.approx(_pruner_sees(_sequential(), batched=False)[-1][1])


@pytest.mark.parametrize("fold_mode, batched_pruning, reports", [
    ("batched", "epoch", _batched), ("batched", "fold-end", _batched),
    ("sequential", "fold-end", _sequential)])
def test_the_pruner_is_not_asked_once_every_fold_has_ended(fold_mode, batched_pruning,
                                                           reports) -> None:
    # a trial stopped after its last epoch saves nothing and would lose its complete result
    config = build_config("digits", n_folds=len(CURVES), max_epochs=EPOCHS,
                          fold_mode=fold_mode, batched_pruning=batched_pruning)
    to_pruner, finished = pruner_reports(config), []
    for m in reports():
        to_pruner(m)
        finished.append(to_pruner.finished)
    assert finished == [False] * (len(finished) - 1) + [True]


def test_the_pruner_judges_batched_folds_by_epoch_from_half_the_epochs_on() -> None:
    from optuna.pruners import MedianPruner

    config = build_config("digits", max_epochs=30, fold_mode="batched", pruner="median",
                          batched_pruning="epoch")
    pruner = make_pruner(config)
    assert isinstance(pruner, MedianPruner)
    assert (pruner._n_warmup_steps, pruner._interval_steps) == (15, 1)
    # sequential folds and the fold-end view: the end of every fold
    for other in (config.replace(fold_mode="sequential", batched_pruning="fold-end"),
                  config.replace(batched_pruning="fold-end")):
        pruner = make_pruner(other)
        assert (pruner._n_warmup_steps, pruner._interval_steps) == (29, 30)
    with pytest.raises(ValueError, match="--batched-pruning"):
        build_config("digits", batched_pruning="always")
    # with sequential folds it would do nothing: said, not ignored
    with pytest.raises(ValueError, match="^--batched-pruning epoch judges batched folds, but this "
                       "study trains its folds one after the other .fold mode 'sequential'.; "
                       "add --fold-mode batched, or leave --batched-pruning out.$"):
        build_config("digits", batched_pruning="epoch")


def test_a_later_fold_that_ends_first_waits_for_the_folds_before_it() -> None:
    in_order = InFoldOrder(EPOCHS)
    assert in_order(_metrics(1, EPOCHS - 1, 0.9, filled=True)) == []
    passed = in_order(_metrics(0, 3, 1.0))
    assert [(m.fold, m.epoch) for m in passed] == [(0, 3), (1, 3)]


def test_fold_mode_comes_from_the_study_file_and_the_command_line() -> None:
    assert build_config("digits").fold_mode == "sequential"
    assert build_config("digits", overrides=["search.fold_mode=batched"]).fold_mode == "batched"
    assert build_config("digits", overrides=["search.fold_mode=batched"],
                        fold_mode="sequential").fold_mode == "sequential"
    with pytest.raises(ValueError, match="fold_mode"):
        build_config("digits", overrides=["search.fold_mode=parallel"])
    with pytest.raises(ValueError, match="--fold-mode"):
        build_config("digits", fold_mode="parallel")


@pytest.mark.slow
def test_a_batched_digits_study_runs_end_to_end(tmp_path: Path) -> None:
    from search.driver import run_study
    from search.study import open_study

    config = build_config("digits", n_trials=2, n_folds=3, max_epochs=3, pruner="none", seed=0,
                          storage=f"sqlite:///{tmp_path}/optuna.db",
                          tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", fold_mode="batched",
                          batched_pruning="epoch",
                          overrides=["model.units=64", "model.hidden_layers=2"], report=False)
    run_study(config, progress=False)
    trials = open_study(config).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        losses = t.user_attrs[FOLD_LOSSES_ATTR]
        assert len(losses) == 3 and t.value == pytest.approx(sum(losses) / 3)
        assert t.value < 2.0  # ln 10 = 2.30: every trial learned
        # judged by epoch: every fold's mean each epoch, the CV loss at the last
        assert sorted(t.intermediate_values) == [0, 1, 2, 5, 8]
        assert t.intermediate_values[2] == pytest.approx(t.value)


@pytest.mark.parametrize("extra, named", [
    (["space.label_smoothing={low: 0.01, high: 0.3, allow_off: true}"], "label_smoothing"),
    (["space.mixup={low: 0.1, high: 1.0, allow_off: true}",
      "space.weight_decay={low: 0.001, high: 0.1, log: true, allow_off: true}"],
     "weight_decay, mixup"),
    (["data.zca_epsilon=0.1"], "data.zca_epsilon"),
])
def test_batched_folds_refuse_what_their_copies_do_not_train(extra, named) -> None:
    with pytest.raises(ValueError, match=f"fold mode 'batched' does not train {named} yet"):
        build_config("digits", fold_mode="batched", overrides=extra)
    # the same study trains them fold after fold
    assert build_config("digits", fold_mode="sequential", overrides=extra).fold_mode == "sequential"


@pytest.mark.parametrize("strength", [s for s in STRENGTHS if not s.batched],
                         ids=lambda s: s.name)
def test_batched_folds_refuse_each_strength_declared_not_batched(strength) -> None:
    searched = f"space.{strength.name}={{low: 0.01, high: 0.5, allow_off: true}}"
    with pytest.raises(ValueError, match=f"does not train {strength.name} yet"):
        build_config("digits", fold_mode="batched", overrides=[searched])
    # a fixed value in the study's training settings is refused too; 0 (off) is not
    with pytest.raises(ValueError, match=f"does not train {strength.name} yet"):
        build_config("digits", fold_mode="batched", overrides=[f"training.{strength.name}=0.1"])
    assert build_config("digits", fold_mode="batched",
                        overrides=[f"training.{strength.name}=0.0"]).fold_mode == "batched"


def test_batched_folds_refuse_the_modern_baselines_before_any_store_is_opened(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "digits", "--fold-mode", "batched",
         "--baselines", "modern"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: fold mode 'batched' does not train weight_decay, label_smoothing, mixup, cutmix "
        "yet (each copy of the model would ignore them); use --fold-mode sequential, or leave "
        "them out of the study.")
    assert not (tmp_path / "mlruns").exists()


# ---- several recipes per step ---------------------------------------------------------------

def test_recipes_per_step_needs_batched_folds_and_no_searched_shared_setting(tmp_path) -> None:
    assert build_config("digits").recipes_per_step == 1
    assert build_config("digits", fold_mode="batched", recipes_per_step=4).recipes_per_step == 4
    with pytest.raises(ValueError, match=(
            r"^--recipes-per-step 4 trains several trials' folds as copies of the model in one "
            r"step, but this study trains its folds one after the other \(fold mode "
            r"'sequential'\); add --fold-mode batched, or leave --recipes-per-step out\.$")):
        build_config("digits", recipes_per_step=4)
    with pytest.raises(ValueError, match="--recipes-per-step"):
        build_config("digits", fold_mode="batched", recipes_per_step=0)
    # a digits study that searches the learning rate and batch size it fixes
    study = tmp_path / "searched.yaml"
    study.write_text((Path(__file__).resolve().parents[2] / "spaces" / "digits.yaml").read_text()
                     .replace("  batch_size: 64\n  learning_rate: 1.0e-3\n", ""))
    searched = ["space.learning_rate={low: 1.0e-4, high: 1.0e-2, log: true}",
                "space.batch_size={type: int, low: 16, high: 128}"]
    with pytest.raises(ValueError, match=(
            r"^--recipes-per-step 2: the recipes of one step share learning_rate, batch_size, "
            r"max_epochs, but this study searches learning_rate, batch_size; leave "
            r"--recipes-per-step out, or fix them in the study's training section\.$")):
        build_config(str(study), fold_mode="batched", recipes_per_step=2, overrides=searched)
    # one recipe per step: searching them is fine
    assert build_config(str(study), fold_mode="batched", overrides=searched).n_trials > 0


@pytest.mark.slow
def test_a_study_trains_several_recipes_per_step_each_as_it_would_alone(tmp_path: Path,
                                                                        capsys) -> None:
    from mlflow import MlflowClient

    from search.datasets import load_data
    from search.driver import run_study
    from search.names import RECIPE_ATTR, RUN_ID_ATTR
    from search.study import open_study
    from search.training import prepare_training
    from trainers.batched import cross_validate_batched
    from trainers.recipe import Recipe

    config = build_config("digits", n_trials=5, n_folds=2, max_epochs=3, pruner="none", seed=0,
                          storage=f"sqlite:///{tmp_path}/optuna.db",
                          tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", fold_mode="batched",
                          recipes_per_step=3, overrides=["model.units=32"], report=False)
    run_study(config, progress=False)
    out = capsys.readouterr().err
    assert "2 folds x 3 epochs (batched folds, 3 trials per step), 1 worker(s)" in out, out
    ended = [line.split(" cv")[0] for line in out.splitlines() if line.startswith("trial ")]
    assert [line.removesuffix(" with") for line in ended] == [
        f"trial {n}: complete" for n in range(5)], out
    trials = open_study(config).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    # 5 trials, 3 per step: trials 0-2 trained together, then 3-4 once they had ended
    first, second = trials[:3], trials[3:]
    assert max(t.datetime_start for t in first) < min(t.datetime_complete for t in first)
    assert max(t.datetime_complete for t in first) < min(t.datetime_start for t in second)
    assert max(t.datetime_start for t in second) < min(t.datetime_complete for t in second)
    client = MlflowClient(config.tracking_uri)
    for t in trials:
        run = client.get_run(t.user_attrs[RUN_ID_ATTR])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["cv_val_loss"] == pytest.approx(t.value)
    assert len({round(t.value, 4) for t in trials}) == 5  # five different recipes
    # each recipe's folds, trained alone, give what the step gave it
    data = load_data(config.spec.data, where="test", seed=config.seed)
    training = prepare_training(config, data)
    for t in (trials[1], trials[4]):
        alone = cross_validate_batched(
            data.train, training.folds, Recipe.from_dict(t.user_attrs[RECIPE_ATTR]),
            training.models, seed=config.seed, class_weight=training.class_weight,
            fail_at_chance=False)
        assert t.user_attrs[FOLD_LOSSES_ATTR] == pytest.approx(
            [f.val_loss for f in alone.folds], rel=1e-5)


@pytest.mark.slow
def test_a_stop_during_a_step_interrupts_its_trials_and_the_rerun_trains_them(tmp_path) -> None:
    import os
    import signal
    import threading

    import optuna
    from mlflow import MlflowClient

    from search import stopping
    from search.driver import run_study
    from search.names import INTERRUPTED_ATTR, RETRY_OF_ATTR, RUN_ID_ATTR
    from search.study import open_study

    config = build_config("digits", n_trials=3, n_folds=2, max_epochs=16, pruner="none", seed=0,
                          storage=f"sqlite:///{tmp_path}/optuna.db",
                          tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", fold_mode="batched",
                          recipes_per_step=3, report=False, overrides=[
                              "model.units=32",
                              "space.patience={type: int, low: 16, high: 16, default: 16}"])
    training = threading.Event()
    seen: list[str] = []  # what the watcher last saw, for the failure message

    def ctrl_c_once_the_step_trains() -> None:
        storage = None
        while not training.wait(0.2):
            try:  # one storage, polled (a new one per poll took seconds on a loaded machine)
                storage = storage or optuna.storages.RDBStorage(config.storage)
                trials = optuna.load_study(study_name="digits", storage=storage).trials
            except Exception as exc:  # noqa: BLE001 - not created yet
                seen[:] = [f"{type(exc).__name__}: {exc}"]
                continue
            seen[:] = [f"{t.number}: {t.state.name}, {len(t.intermediate_values)} reports"
                       for t in trials]
            if len(trials) == 3 and all(t.intermediate_values for t in trials):
                training.set()
                seen.append("Ctrl-C sent")
                os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C as `search.run` takes it: a KeyboardInterrupt that Python could not raise where
    # it landed is still remembered and ends the step at its next epoch
    previous = signal.getsignal(signal.SIGINT)
    stopping.remember_ctrl_c()
    watcher = threading.Thread(target=ctrl_c_once_the_step_trains, daemon=True)
    watcher.start()
    try:
        outcome = run_study(config, progress=False)
    finally:
        training.set()
        signal.signal(signal.SIGINT, previous)
        stopping._stop_reason = None  # the stop is handled: the rerun below is a new run
    assert outcome.interrupted, f"the watcher saw: {seen}"
    trials = open_study(config).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    client = MlflowClient(config.tracking_uri)
    for t in trials[:3]:
        assert t.user_attrs[INTERRUPTED_ATTR] is True
        assert client.get_run(t.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"
    assert sorted(t.user_attrs[RETRY_OF_ATTR] for t in trials[3:]) == [0, 1, 2]
    assert [t.system_attrs["fixed_params"] for t in trials[3:]] == [t.params for t in trials[:3]]

    # the rerun trains the three queued recipes, together, and counts nothing twice
    rerun = run_study(config, progress=False)
    assert not rerun.interrupted
    trials = open_study(config).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 3
    assert max(t.datetime_start for t in trials[3:]) < min(t.datetime_complete for t in trials[3:])
