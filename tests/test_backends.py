"""The model code is backend-agnostic: the trainer tests and a whole study pass on JAX and PyTorch.

The rest of the suite runs on TensorFlow, the CPU backend. Keras fixes its backend when it is
first imported, so each other backend runs in a fresh process with ``KERAS_BACKEND`` set (the
trainer tests) or with ``search.run --backend`` (a study). A backend that is not installed is
skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from search.names import BACKEND_ATTR

ROOT = Path(__file__).resolve().parent.parent
OTHER_BACKENDS = ("jax", "torch")
# the trainer tests that run Keras; the loaders, folds and recipes are NumPy only
KERAS_TESTS = tuple(f"tests/trainers/test_{name}.py"
                    for name in ("augment", "batched", "cnn", "fit", "layers", "reuse"))
# On the other backends, a file's tests that depend on the backend (compiled math, gradients,
# optimizer state, tracing); the rest is Python logic the TensorFlow run already covers. The
# whole of test_batched took 266 s on JAX, the suite's second longest item, and test_cnn 292 s,
# the longest: its wiring tests build EfficientNet-B0 three times to count layers, and one
# uncompiled EfficientNet step took 234 s on JAX (Keras's own model; the TensorFlow run trains it,
# and our wrapping of it, the pixel scale, is tested here).
BACKEND_SUBSET = {
    "tests/trainers/test_cnn.py": "builder_fits_one_step or sees_pixels or conv_dropout or "
                                  "one_after_another",
    "tests/trainers/test_batched.py": "one_fold_batched_equals_sequential or learns_nothing or "
                                      "frozen_copy or compile_once or share_no_variable or "
                                      "(would_alone and reuse) or never_retrace",
    # JAX's whole test_reuse took 453 s (CI's longest item): every new strength three times
    # against a fresh model; one of them (the loss's, label smoothing) stands for the tracing
    "tests/trainers/test_reuse.py": "recipes_in_sequence or starts_every_seed or compiles_once or "
                                    "label_smoothing or reads_the_assigned_strengths or "
                                    "matches_rebuild",
    "tests/trainers/test_augment.py": "matches_scipy or magnitude_zero_is_identity_in_training or "
                                      "magnitude_assign_needs_no_recompile or bfloat16 or "
                                      "shear_is_the_identity",
    "tests/trainers/test_fit.py": "same_seed_same_losses or raises_diverged or l2_penalty or "
                                  "per_image_losses or early_stopping_watches or "
                                  "stops_the_whole_trial",
}


def _needs(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[test]' installs it)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.mark.slow
@pytest.mark.parametrize("tests", KERAS_TESTS, ids=lambda path: Path(path).stem)
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_trainer_tests_pass_on(backend: str, tests: str) -> None:
    # one test file a process: pytest-xdist spreads them over its workers (one process for
    # all five files on JAX took 17 minutes on 2 busy cores, the suite's longest test)
    _needs(backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
         "-n", "0", tests, *(["-k", BACKEND_SUBSET[tests]] if tests in BACKEND_SUBSET else [])],
        cwd=ROOT, env=_env(KERAS_BACKEND=backend), capture_output=True, text=True,
        timeout=900,  # the longest, JAX's test_reuse, took 330 s in the loaded suite
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"on {backend}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_a_study_runs_on(backend: str, tmp_path: Path) -> None:
    _needs(backend)
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "search.run", "--study", "digits", "--backend", backend,
         "--trials", "2", "--folds", "2", "--epochs", "3", "--set", "model.units=64",
         "--storage", storage, "--tracking-uri", tracking, "--no-progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="digits", storage=storage)
    assert study.user_attrs[BACKEND_ATTR] == backend
    states = [t.state for t in study.trials]
    assert len(states) == 2 and optuna.trial.TrialState.RUNNING not in states
    assert study.best_value < 2.0  # below chance, ln 10 = 2.30: the models learned
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert len(runs) == 3 and all(r.info.status != "RUNNING" for r in runs)  # parent + 2 trials
