"""The settings of one study run: a study file's declarations plus command-line overrides."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.baseline_sets import BASELINE_SETS
from spaces import StudySpec, check_choice, check_float, check_int, load_study
from spaces.load import FOLD_MODES, N_FOLDS_RANGE, PRUNERS, SAMPLERS, SEED_MAX
from spaces.strengths import SHARED_IN_STEP, STRENGTHS

DEFAULT_ROOT = Path("mlruns")
PRECISIONS = ("float32", "bfloat16")
# What batched folds do not train yet (`Strength.batched`): the decoupled decay lives in
# `trainers.optimizer`'s AdamW, label smoothing and the mix weight in `trainers.loss`, while a
# `trainers.batched.FoldCopies` step has its own optimizer and masked loss (ZCA, fitted per
# fold's model, is refused too)
NOT_BATCHED = tuple(s.name for s in STRENGTHS if not s.batched)
# What a mistake in a study file, an option, the data or a store looks like when it is found.
USER_ERRORS = (LookupError, ValueError, TypeError, FileNotFoundError)


class UsageError(Exception):
    """A mistake in what the user asked for, found once the study opens (data, model, store).

    `search.run` prints its message on one line and exits 2. Other exceptions raised while trials
    run are regsearch's own faults and keep their traceback.
    """


@contextlib.contextmanager
def user_input():
    """Turn the `USER_ERRORS` raised inside the block into `UsageError` (message unchanged)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise UsageError(error_text(exc)) from exc


def error_text(exc: BaseException) -> str:
    """An exception's message for one line of output (a KeyError's not repr-quoted)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc)


# What the pruner judges with batched folds (`StudyConfig.batched_pruning`)
BATCHED_PRUNING = ("fold-end", "epoch")


@dataclass(frozen=True)
class StudyConfig:
    """Everything `search.run` needs; checked once, here.

    Attributes:
        spec: the study file (data, model, fixed training settings, space).
        n_trials: trial budget over the whole study, counted across invocations.
        timeout: seconds after which this invocation starts no new trial (None: no limit).
        n_folds, max_epochs, sampler, pruner, seed: override the study file's values.
        tpe_options: the study file's ``search.tpe`` options, over `search.study.TPE_DEFAULTS`.
        storage: Optuna storage URL, or a path to a journal file.
        tracking_uri: MLflow tracking URI.
        fresh: delete the stored study and start over.
        baselines: name of a set of hand-picked recipes to cross-validate beside the search.
        rebuild_per_trial: build and compile a fresh model for every fold instead of reusing
            one compiled model per worker (slower; for comparison).
        fold_mode: "sequential" (fold after fold) or "batched" (a trial's folds as copies of
            the model in one compiled step, `trainers.batched`); overrides the study file's.
        batched_pruning: with batched folds, what the pruner judges: "fold-end" (what
            sequential folds report, `search.worker.InFoldOrder`: in practice no decision
            before every copy has trained its last epoch) or "epoch" (the mean of every fold's
            best loss so far, each epoch from half the epochs on, `search.worker.AcrossFolds`).
        recipes_per_step: with batched folds, how many trials one worker asks from Optuna
            together and trains in one compiled step (`trainers.batched.cross_validate_recipes`:
            recipes x folds copies); 1 trains trial after trial.
        report: after the search, retrain the selected recipe (and baselines) on the whole
            training split and score the held-out split, when the data has one.
        report_top: retrain the best this many trials for the report (the rank agreement
            of CV and held-out loss needs several recipes); the selected one is the first.
        stop_within_noise: end the search before the budget once the best recipe could not
            improve by more than the noise of its own CV loss (`search.convergence`).
    """

    spec: StudySpec
    n_trials: int
    n_folds: int
    max_epochs: int
    sampler: str
    pruner: str
    seed: int
    storage: str
    tracking_uri: str
    timeout: float | None = None
    fresh: bool = False
    enqueue_defaults: bool = True
    baselines: str | None = None
    report: bool = True
    report_top: int = 3
    stop_within_noise: bool = False
    precision: str = "float32"
    rebuild_per_trial: bool = False
    fold_mode: str = "sequential"
    batched_pruning: str = "fold-end"
    recipes_per_step: int = 1
    tpe_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("--trials", self.n_trials, low=1)
        check_int("--folds", self.n_folds, low=N_FOLDS_RANGE[0], high=N_FOLDS_RANGE[1])
        check_int("--epochs", self.max_epochs, low=1)
        check_choice("--sampler", self.sampler, SAMPLERS)
        check_choice("--pruner", self.pruner, PRUNERS)
        check_int("--seed", self.seed, low=0, high=SEED_MAX)
        check_int("--report-top", self.report_top, low=1)
        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--fold-mode", self.fold_mode, FOLD_MODES)
        check_choice("--batched-pruning", self.batched_pruning, BATCHED_PRUNING)
        if self.batched_pruning == "epoch" and self.fold_mode != "batched":
            raise ValueError(
                "--batched-pruning epoch judges batched folds, but this study trains its folds "
                f"one after the other (fold mode {self.fold_mode!r}); add --fold-mode batched, "
                "or leave --batched-pruning out.")
        check_int("--recipes-per-step", self.recipes_per_step, low=1)
        if self.recipes_per_step > 1 and self.fold_mode != "batched":
            raise ValueError(
                f"--recipes-per-step {self.recipes_per_step} trains several trials' folds as "
                "copies of the model in one step, but this study trains its folds one after "
                f"the other (fold mode {self.fold_mode!r}); add --fold-mode batched, or leave "
                "--recipes-per-step out.")
        if self.fold_mode == "batched":
            self._check_batched()
        if self.baselines is not None:
            check_choice("--baselines", self.baselines, tuple(BASELINE_SETS))
        if self.timeout is not None:
            check_float("--timeout", self.timeout, low=0.0, low_open=True)

    def _check_batched(self) -> None:
        """Refuse, before any store is opened, what batched folds do not train yet
        (`NOT_BATCHED`, ZCA whitening): silently ignored, it would be searched
        for nothing."""
        searched = {p.name for p in self.spec.space.params}
        baselines = BASELINE_SETS.get(self.baselines or "", {}).values()
        used = [name for name in NOT_BATCHED if name in searched or self.spec.training.get(name)
                or any(r.get(name) for r in baselines)]
        if self.spec.data.get("zca_epsilon") is not None:
            used.append("data.zca_epsilon")
        shared = [name for name in SHARED_IN_STEP if name in searched]
        if self.recipes_per_step > 1 and shared:
            them = "them" if len(shared) > 1 else "it"
            raise ValueError(
                f"--recipes-per-step {self.recipes_per_step}: the recipes of one step share "
                f"{', '.join(SHARED_IN_STEP)}, but this study searches {', '.join(shared)}; leave "
                f"--recipes-per-step out, or fix {them} in the study's training section.")
        if used:
            them = "them" if len(used) > 1 else "it"
            raise ValueError(
                f"fold mode 'batched' does not train {', '.join(used)} yet (each copy of the "
                f"model would ignore {them}); use --fold-mode sequential, or leave {them} out "
                f"of the study.")

    @property
    def name(self) -> str:
        return self.spec.name

    def settings(self) -> dict[str, Any]:
        """The settings that make trials comparable; a resumed study must keep them."""
        return {
            "n_folds": self.n_folds,
            "max_epochs": self.max_epochs,
            "seed": self.seed,
            "data": self.spec.data,
            "model": self.spec.model,
            "training": self.spec.training,
            "space": self.spec.space.to_dict(),
        }

    def replace(self, **changes: Any) -> "StudyConfig":
        return dataclasses.replace(self, **changes)


def default_storage(root: Path = DEFAULT_ROOT) -> str:
    """Optuna's default store: a SQLite file beside MLflow's, under ``mlruns/``."""
    return f"sqlite:///{(root / 'optuna.db').as_posix()}"


def default_tracking_uri(root: Path = DEFAULT_ROOT) -> str:
    """MLflow's default store, the one ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` opens."""
    return f"sqlite:///{(root / 'mlflow.db').as_posix()}"


def build_config(study: str, *, overrides: tuple[str, ...] | list[str] = (),
                 **options: Any) -> StudyConfig:
    """Load a study file, apply ``overrides`` (``section.key=value``) and ``options``.

    ``options`` are `StudyConfig` fields (its docstring says what each does; `search.run`'s
    options have the same names); None, or leaving one out, keeps the study file's value, or
    the field's default where the study file has none.

    Raises:
        LookupError: unknown study.
        ValueError, TypeError: a bad study file or override; the message names it.
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"build_config() got unknown option(s) {', '.join(unknown)}; "
                        f"expected some of {', '.join(sorted(OPTIONS))}")
    spec = load_study(study, overrides)
    s = spec.search
    from_file = {
        "n_trials": s.n_trials, "n_folds": s.n_folds,
        "max_epochs": spec.training.get("max_epochs", 20), "sampler": s.sampler,
        "pruner": s.pruner, "seed": s.seed, "storage": default_storage(),
        "tracking_uri": default_tracking_uri(), "fold_mode": s.fold_mode,
        "recipes_per_step": s.recipes_per_step,
    }
    given = {k: v for k, v in options.items() if v is not None}
    return StudyConfig(spec=spec, enqueue_defaults=s.enqueue_defaults, tpe_options=dict(s.tpe),
                       **{**from_file, **given})


# The fields an option can set: all but what only the study file declares
OPTIONS = {f.name for f in dataclasses.fields(StudyConfig)} - {"spec", "enqueue_defaults",
                                                                 "tpe_options"}
