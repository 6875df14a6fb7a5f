"""The names regsearch stores: Optuna study and trial attributes, MLflow tags and the metrics
kept as both. Nothing else.

Stored names outlive the code that wrote them (a study resumed by a newer regsearch, an export
of an old study), so each is written here once and every module reads it from here.
"""

# Optuna study user attributes
SETTINGS_ATTR = "regsearch.settings"  # the settings a resumed study must keep
PARENT_RUN_ATTR = "regsearch.mlflow_parent_run_id"  # the study's MLflow parent run
DATA_ATTR = "regsearch.data"  # the data's shape facts, for an exported recipe
BASELINES_ATTR = "regsearch.baselines"  # {baseline name: outcome}
HELDOUT_ATTR = "regsearch.heldout"  # the held-out report's retrainings, reused by a rerun
BACKEND_ATTR = "regsearch.keras_backend"  # the Keras backend (study: first opener; trial: its own)
# set when --stop-within-noise ended the search: {n_trials, regret_bound, cv_error}
CONVERGED_ATTR = "regsearch.stopped_within_noise"

# Optuna trial user attributes
RECIPE_ATTR = "recipe"  # the full `trainers.Recipe` the trial trained
FAIL_REASON_ATTR = "fail_reason"  # why the trial failed or was interrupted (also an MLflow tag)
INTERRUPTED_ATTR = "interrupted"  # stopped by a signal or a lost store: not counted in the budget
RUN_ID_ATTR = "mlflow_run_id"  # the trial's (or a baseline's) MLflow child run
BEST_EPOCHS_ATTR = "best_epochs"  # each fold's best epoch (0-based)
FOLD_LOSSES_ATTR = "fold_val_losses"  # each fold's best validation loss (the objective's terms)
AT_CHANCE_ATTR = "at_chance"  # True: some fold never beat chance level; never selected
RETRY_OF_ATTR = "retry_of"  # a trial queued again after its worker died: the failed one's number
ENQUEUED_ATTR = "enqueued"  # "defaults": the study file's defaults, queued as the first trial
WORKER_ATTR = "worker"  # host:pid of the process that ran the trial
WORKER_NS_ATTR = "worker_pid_namespace"  # that process's PID namespace (`search.liveness`)
WORKER_START_ATTR = "worker_started"  # its start time (clock ticks after boot): tells pid reuse
# in a baseline's stored outcome while it trains: the process training it
RUNNING_IN_KEY = "running_in"

# MLflow tags
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a child run under the study's run
ROLE_TAG = "regsearch.role"  # "study", "trial" or "baseline"
STUDY_NAME_TAG = "optuna.study_name"
STORAGE_TAG = "optuna.storage"
TRIAL_NUMBER_TAG = "optuna.trial_number"
TRIAL_STATE_TAG = "optuna.trial_state"  # COMPLETE, PRUNED, FAIL (RUNNING while it trains)
FAIL_REASON_TAG = FAIL_REASON_ATTR
INTERRUPTED_TAG = INTERRUPTED_ATTR
BASELINE_TAG = "baseline"  # a baseline run's name
WORKER_TAG = WORKER_ATTR
BACKEND_TAG = "keras_backend"
AT_CHANCE_TAG = "regsearch.at_chance"  # "true" on a run whose recipe never beat chance level

# the study's MLflow parent run: ``best.<key>`` per searched value of the selected trial, and
# ``plots.skipped.<plot>``: why a plot was not drawn
BEST_TAG_PREFIX = "best."
BEST_TRIAL_TAG = f"{BEST_TAG_PREFIX}trial_number"
PLOTS_SKIPPED_TAG_PREFIX = "plots.skipped."

# Metrics of a cross-validated recipe (`search.recording.summarize`): logged to its MLflow run,
# and kept as user attributes of its Optuna trial (a baseline: in its stored outcome)
CV_LOSS = "cv_val_loss"  # the objective: the folds' mean best validation loss
CV_LOSS_STD = "cv_val_loss_std"
CV_ACCURACY = "cv_val_accuracy"
CV_TRAIN_LOSS = "cv_train_loss"
GAP = "generalization_gap"
N_FOLDS_TRAINED = "n_folds_trained"
EPOCHS_TRAINED = "epochs_trained"
FIT_SECONDS = "fit_seconds"
FIRST_STEP_SECONDS = "first_step_seconds"
LATER_FIRST_STEP_SECONDS = "later_folds_first_step_seconds"

# MLflow experiment tags
# MLflow's UI reads a view (search, sort, columns, charts) from the experiment tag
# ``mlflow.sharedViewState.<key>`` when a link carries ``viewStateShareKey=<key>``
SHARED_VIEW_KEY = "regsearch-trials"
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{SHARED_VIEW_KEY}"
