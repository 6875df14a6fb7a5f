"""What the trial loop prints about a trial: where a pruned one stopped."""

from __future__ import annotations

import pytest

from search.worker import where_stopped


@pytest.mark.parametrize("step,n_folds,max_epochs,text", [
    (0, 3, 30, "in fold 1/3 at epoch 1/30"),
    (29, 3, 30, "in fold 1/3 at epoch 30/30"),  # the "pruned at step 29"
    (30, 3, 30, "in fold 2/3 at epoch 1/30"),
    (89, 3, 30, "in fold 3/3 at epoch 30/30"),
    (7, 2, 4, "in fold 2/2 at epoch 4/4"),
])
def test_where_stopped_speaks_in_folds_and_epochs(step, n_folds, max_epochs, text) -> None:
    assert where_stopped(step, n_folds, max_epochs) == text


@pytest.mark.parametrize("step,text", [
    (14, "at epoch 15/30 of every fold"),  # judged by epoch (`search.worker.AcrossFolds`)
    (29, "at epoch 30/30 of every fold"),  # judged at the first fold's end: all trained it
])
def test_where_a_batched_trial_stopped_is_an_epoch_of_every_fold(step, text) -> None:
    assert where_stopped(step, 3, 30, batched=True) == text
