"""The study's plots, drawn from a real study."""

from __future__ import annotations

import matplotlib.pyplot as plt
import optuna
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from search.config import build_config
from search.plots import (
    N_NAMED,
    PLOTS,
    _pruning_curves,
    _slice,
    save_study_plots,
    slice_params,
)
from spaces import sample_params


def _study(n_trials: int = 8, seed: int = 0) -> optuna.Study:
    """Digits-space trials with made-up losses: every third one pruned, the rest complete."""
    space = build_config("digits").spec.space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for number in range(n_trials):
        trial = study.ask()
        recipe = sample_params(space, trial)
        loss = 1.0 + recipe["dropout"] + (0.0 if recipe["l1"] == 0.0 else 0.5)
        for step in range(3):
            trial.report(loss - 0.1 * step, step)
        if number % 3 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, loss)
    return study


def test_every_plot_is_drawn_and_the_slice_shows_strengths_not_switches(tmp_path) -> None:
    study = _study()
    written, skipped = save_study_plots(study, tmp_path)

    assert skipped == {}
    assert [p.stem for p in written] == list(PLOTS) and "slice" in PLOTS
    for path in written:
        width, height = Image.open(path).size
        assert width > 500 and height > 300
    assert "l1_on" in {p for t in study.trials for p in t.params}
    assert slice_params(study) == ["l1", "l2", "dropout", "augment", "patience"]
    # a parameter only a pruned trial had is not one the slice can draw
    pruned = study.ask({"l1_on": optuna.distributions.CategoricalDistribution([True, False]),
                        "l1": optuna.distributions.FloatDistribution(1e-7, 1e-3, log=True),
                        "novel": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert "novel" not in slice_params(study)
    assert [p.stem for p in save_study_plots(study, tmp_path / "again")[0]] == list(PLOTS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_slice_shows_the_trials_with_a_penalty_off_at_off(seed: int) -> None:
    study = _study(n_trials=12, seed=seed)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    axes = _slice(study, plt).figure.axes
    try:
        panels = {ax.get_xlabel(): ax for ax in axes if ax.get_xlabel()}
        for name in ("l1", "l2"):
            ax = panels[name]
            points = ax.collections[0].get_offsets()
            assert len(points) == len(complete)  # Optuna's slice drew only the trials with it on
            off = [t for t in complete if not t.params[f"{name}_on"]]
            labels = [label.get_text() for label in ax.get_xticklabels()]
            assert ("off" in labels) == bool(off)
            if off:  # left of every value the penalty takes when on
                off_x = ax.get_xticks()[labels.index("off")]
                assert sum(x == off_x for x, _ in points) == len(off)
                assert off_x < min(t.params[name] for t in complete if name in t.params)
    finally:
        plt.close("all")


def test_a_penalty_off_in_every_complete_trial_still_has_its_panel() -> None:
    study = optuna.create_study()
    switch = optuna.distributions.CategoricalDistribution([True, False])
    dropout = optuna.distributions.FloatDistribution(0.0, 0.6)
    for value in (0.1, 0.3):
        study.add_trial(optuna.trial.create_trial(
            params={"l2_on": False, "dropout": value}, value=1.0 + value,
            distributions={"l2_on": switch, "dropout": dropout}))
    ax = _slice(study, plt)
    try:
        (panel,) = [a for a in ax.figure.axes if a.get_xlabel() == "l2"]
        assert [label.get_text() for label in panel.get_xticklabels()] == ["off"]
        assert len(panel.collections[0].get_offsets()) == 2
    finally:
        plt.close("all")


def test_pruning_curves_name_the_best_trials_in_distinct_colours_and_grey_the_pruned() -> None:
    study = _study(n_trials=30)
    ax = _pruning_curves(study, plt)
    try:
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        best = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.value)[:N_NAMED]
        assert legend[:N_NAMED] == [f"trial {t.number}: {t.value:.4f}" for t in best]
        assert set(legend[N_NAMED:]) == {"other complete trials", "pruned"}
        colours = {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()}
        named = [colours[label] for label in legend[:N_NAMED]]
        assert len(set(named)) == N_NAMED
        assert colours["pruned"] not in named and colours["other complete trials"] not in named
    finally:
        plt.close("all")
