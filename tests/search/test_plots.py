"""The study's plots, drawn from a real study."""

from __future__ import annotations

import optuna
from PIL import Image

from search.config import build_config
from search.plots import PLOTS, _options, save_study_plots
from spaces import sample_params


def test_every_plot_is_drawn_and_the_slice_shows_strengths_not_switches(tmp_path) -> None:
    space = build_config("digits").spec.space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for step in range(8):
        trial = study.ask()
        recipe = sample_params(space, trial)
        for epoch in range(3):
            trial.report(1.0 + recipe["dropout"] - 0.1 * epoch, epoch)
        study.tell(trial, 1.0 + recipe["dropout"])

    written, skipped = save_study_plots(study, tmp_path)

    assert skipped == {}
    assert [p.stem for p in written] == list(PLOTS) and "slice" in PLOTS
    for path in written:
        width, height = Image.open(path).size
        assert width > 500 and height > 300
    assert "l1_on" in {p for t in study.trials for p in t.params}
    assert _options("slice", study)["params"] == ["augment", "dropout", "l1", "l2", "patience"]
    # a parameter only a pruned trial had is not one the slice can draw
    pruned = study.ask({"l1_on": optuna.distributions.CategoricalDistribution([True, False]),
                        "l1": optuna.distributions.FloatDistribution(1e-7, 1e-3, log=True),
                        "novel": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert "novel" not in _options("slice", study)["params"]
    assert [p.stem for p in save_study_plots(study, tmp_path / "again")[0]] == list(PLOTS)
