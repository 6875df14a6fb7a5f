"""Real image studies end to end: Tiny ImageNet (a slice of the shared copy) and a user folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from search.config import build_config
from search.names import HELDOUT_ATTR

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiny-imagenet-200"
# A small model that leaves chance level within two epochs on a few dozen images.
SMALL_MLP = ["model.name=mlp", "model.hidden_layers=1", "model.units=32"]


def _stores(tmp_path: Path) -> dict[str, str]:
    return {"storage": f"sqlite:///{tmp_path}/optuna.db",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no Tiny ImageNet copy at {SHARED}")
def test_tinyimagenet_study_with_baselines_and_heldout_report(tmp_path: Path) -> None:
    from search.driver import run_study

    config = build_config(
        "tinyimagenet", n_trials=2, n_folds=2, max_epochs=2, seed=0, baselines="reference",
        overrides=["data.n_classes=3", "data.images_per_class=30", "training.learning_rate=1e-3",
                   *SMALL_MLP],
        **_stores(tmp_path),
    )
    outcome = run_study(config, data_dir=str(SHARED), progress=False)
    study = outcome.study
    data = study.user_attrs["regsearch.data"]
    assert data["n_classes"] == 3 and data["n_train"] == 90 and data["n_heldout"] == 150
    assert data["input_shape"] == [64, 64, 3]

    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tinyimagenet").experiment_id])
    baselines = {r.data.tags["baseline"]: r for r in runs if "baseline" in r.data.tags}
    assert set(baselines) == {"none", "l2", "augmentation", "dropout_0.25",
                              "l2_1.5e-4_dropout_0.2"}
    assert {r.data.tags["mlflow.parentRunId"] for r in baselines.values()} == {outcome.parent_run_id}
    assert float(baselines["l2"].data.params["l2"]) == 1e-4
    assert float(baselines["augmentation"].data.params["augment"]) == 1.0

    heldout = study.user_attrs[HELDOUT_ATTR]
    selected = [k for k in heldout if k.startswith("selected")]
    assert len(selected) == (1 if study.best_trials else 0)
    for entry in heldout.values():
        assert len(entry["curves"]["heldout_loss"]) == entry["epochs"]
        assert entry["heldout_loss"] == entry["curves"]["heldout_loss"][-1]
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"heldout_report.md", "learning_curves.png"} <= artifacts

    # a rerun neither retrains the baselines nor the report: both are kept in the study
    again = run_study(config, data_dir=str(SHARED), progress=False)
    assert again.study.user_attrs[HELDOUT_ATTR] == heldout
    runs_after = client.search_runs([client.get_experiment_by_name("tinyimagenet").experiment_id])
    assert len(runs_after) == len(runs)


def _image_folder(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """Class k is a noisy image of one colour; sizes vary so the loader must resize."""
    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for name, n in counts.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            size = (20 + i % 5, 18 + i % 3)
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 25, (*size[::-1], 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")


def test_user_folder_study_from_a_yaml_file(tmp_path: Path) -> None:
    from search.driver import run_study

    _image_folder(tmp_path / "images", {"red": 24, "green": 24, "blue": 12})  # imbalanced
    study_file = tmp_path / "colours.yaml"
    study_file.write_text(
        "name: colours\n"
        "data: {source: folder, root: images, image_size: [16, 16], heldout_fraction: 0.25,\n"
        "       class_weights: true}\n"
        "model: {name: mlp, hidden_layers: 1, units: 16}\n"
        "training: {max_epochs: 3, batch_size: 8, learning_rate: 3.0e-3}\n"
        "search: {n_folds: 2, n_trials: 2, seed: 1}\n"
        "space:\n"
        "  dropout: {low: 0.0, high: 0.5, default: 0.1}\n"
        "  patience: {type: int, low: 1, high: 3, default: 2}\n"
    )
    config = build_config(str(study_file), **_stores(tmp_path))
    outcome = run_study(config, progress=False)
    data = outcome.study.user_attrs["regsearch.data"]
    assert data["class_names"] == ["blue", "green", "red"]
    assert data["n_train"] == 45 and data["n_heldout"] == 15
    assert data["input_shape"] == [16, 16, 3]
    assert len(outcome.study.trials) == 2
    assert outcome.counts["complete"] >= 1
    assert "selected (trial %d)" % outcome.study.best_trial.number in \
        outcome.study.user_attrs[HELDOUT_ATTR]
