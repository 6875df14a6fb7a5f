"""Starting a `search.run` in a test and waiting until it is in the middle of a trial."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

# patience as long as the epoch budget: no early stopping, so the first trial is still
# training when the test acts (a signal, a store stopped), however slow or fast the machine
LONG_TRIALS = [sys.executable, "-m", "search.run", "--study", "digits", "--trials", "2",
               "--epochs", "25", "--folds", "2", "--no-progress",
               "--set", "space.patience={type: int, low: 25, high: 25, default: 25}"]


def with_trials(command: list[str], n: int) -> list[str]:
    """`LONG_TRIALS` (or a command built on it) with a trial budget of ``n``."""
    at = command.index("--trials") + 1
    return command[:at] + [str(n)] + command[at + 1:]


def training_trials(storage: str, study_name: str = "digits") -> list:
    """The RUNNING trials of the study that have reported an epoch (none before it exists)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # noqa: BLE001 (not created yet)
        return []
    return [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values]


def start_training(command: list[str], *, cwd, env: dict, storage: str,  # noqa: ANN001
                   timeout: float = 300) -> subprocess.Popen:
    """Start ``command`` (output piped, text) and return it once a trial has an epoch in
    ``storage``; fail the test with its output if none has within ``timeout`` seconds."""
    # A shell's background job inherits SIGINT ignored (and Python then keeps it ignored);
    # give the child the default disposition, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if training_trials(storage):
            return proc
    proc.kill()
    pytest.fail(f"no trial started training within {timeout:.0f} s:\n" + proc.communicate()[0])
