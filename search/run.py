"""Command line: run or resume a study. ``python -m search.run --study digits``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from search.config import OPTIONS, USER_ERRORS, UsageError, build_config, error_text
from search.stopping import as_stop, remember_ctrl_c, stop_cleanly_on, stop_with_launcher
from search.tracking import StoreLost
from spaces import PRUNERS, SAMPLERS, builtin_studies

EXIT_USAGE = 2
# The module each backend needs, and how to install it.
_BACKEND_INSTALL = {"jax": ("jax", 'pip install -e ".[jax]"'),
                    "tensorflow": ("tensorflow", 'pip install -e ".[tensorflow]"'),
                    "torch": ("torch", 'pip install -e ".[torch]"')}
BACKENDS = tuple(_BACKEND_INSTALL)
LAUNCHER_GROUP = "launcher options"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Search the regularization recipe (L1/L2, dropout, augmentation, "
                    "early-stopping patience) that lowers k-fold validation loss.",
    )
    # what only the launching process acts on; its workers get every other option
    launcher = p.add_argument_group(LAUNCHER_GROUP, "acted on by the process you start, "
                                                    "not passed on to its worker processes")
    p.add_argument("--study", required=True,
                   help=f"built-in study ({', '.join(builtin_studies())}) or a study .yaml file")
    p.add_argument("--trials", type=int, dest="n_trials",
                   help="trial budget for the whole study, counted across runs (default: study file)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--folds", type=int, dest="n_folds", help="cross-validation folds (>= 2)")
    p.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs per fold")
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default: tpe)")
    p.add_argument("--pruner", choices=PRUNERS, help="Optuna pruner (default: the study file's, median)")
    p.add_argument("--seed", type=int, help="study seed: folds, sampler, initial weights")
    p.add_argument("--storage", help="Optuna storage URL or journal file "
                                     "(default: sqlite:///mlruns/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                          "or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--data-dir", help="folder of the study's images (overrides the study file)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an entry of the study file, e.g. --set data.n_classes=10 "
                        "--set model.name=small_resnet (repeatable)")
    launcher.add_argument("--baselines", metavar="SET",
                          help="also cross-validate a set of hand-picked recipes ('reference': "
                               "the five of the reference report; 'modern': those five plus "
                               "AdamW weight decay, label smoothing, mixup, cutmix, and all "
                               "together), logged as child runs tagged 'baseline'")
    p.add_argument("--no-report", action="store_false", dest="report",
                   help="skip retraining the selected recipe and baselines on the whole training "
                        "split and scoring the held-out split")
    launcher.add_argument("--report-top", type=int, default=3, metavar="K",
                          help="the held-out report retrains the K best trials (default 3; the "
                               "first is the selected one) to check that the CV ranking carries "
                               "over")
    p.add_argument("--stop-within-noise", action="store_true",
                   help="end the search before the budget once the best recipe could not "
                        "improve by more than the noise of its own CV loss (regret bound, "
                        "checked from 20 complete trials on)")
    launcher.add_argument("--fresh", action="store_true",
                          help="delete the stored study and start over instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    launcher.add_argument("--gpus", help="GPU indices to use, e.g. 0,1 (default: every visible "
                                         "GPU; a CPU-only machine runs one worker)")
    launcher.add_argument("--workers-per-gpu", type=int, default=1,
                          help="worker processes sharing each GPU (default: 1)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: mixed precision (bfloat16 compute, float32 weights)")
    p.add_argument("--rebuild-per-trial", action="store_true",
                   help="build and compile a fresh model for every fold instead of compiling one "
                        "per worker and reusing it (slower; for comparison)")
    p.add_argument("--fold-mode", choices=("sequential", "batched"),
                   help="train a trial's folds one after the other, or as copies of the model in "
                        "one compiled step (default: the study file's search.fold_mode, else "
                        "sequential)")
    p.add_argument("--batched-pruning", choices=("fold-end", "epoch"),
                   help="with --fold-mode batched, what the pruner judges: fold-end (what "
                        "sequential folds report; no decision before the last epoch) or epoch "
                        "(every fold's best loss so far, averaged, each epoch from half the "
                        "epochs on) (default: fold-end)")
    p.add_argument("--recipes-per-step", type=int, metavar="B",
                   help="with --fold-mode batched, train B trials' recipes together, B x folds "
                        "copies of the model in one compiled step (default: the study "
                        "file's search.recipes_per_step, else 1: trial after trial)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the launcher
    return p


def check_backend(chosen: str | None) -> str:
    """Return the Keras backend this run will use; refuse one that is unknown or not installed.

    The same order as Keras: ``--backend``, else ``$KERAS_BACKEND``, else ``keras.json``'s
    ``backend`` (in ``$KERAS_HOME`` or ``~/.keras``), else tensorflow.

    Raises:
        ValueError: the backend is not one regsearch trains on, or its package is missing.
    """
    if chosen:
        name, source = chosen, "--backend"
    elif os.environ.get("KERAS_BACKEND"):
        name, source = os.environ["KERAS_BACKEND"], "$KERAS_BACKEND"
    else:
        config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
        try:
            name, source = json.loads(config.read_text())["backend"], str(config)
        except (OSError, ValueError, KeyError, TypeError):
            name, source = "tensorflow", "Keras's default"
    if name not in _BACKEND_INSTALL:
        raise ValueError(f"Keras backend {name!r} (from {source}) is not one regsearch trains "
                         f"on; expected one of {', '.join(_BACKEND_INSTALL)}.")
    installed = [b for b, (module, _) in _BACKEND_INSTALL.items()
                 if importlib.util.find_spec(module) is not None]
    if name not in installed:
        module, install = _BACKEND_INSTALL[name]
        raise ValueError(f"Keras backend {name!r} (from {source}) is not installed: no module "
                         f"{module!r}; `{install}` in regsearch's folder, or choose an "
                         f"installed one with --backend "
                         f"({', '.join(installed) or 'none is installed'}).")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend  # before anything imports Keras
    # TensorFlow prints C++ start-up notices unless told before its first import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow 2.21's oneDNN CPU kernels segfault on the small ResNet (strided 1x1
    # convolution + batch norm); the plain kernels are correct.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # rich and the GPU plan's nvidia-smi caller: after --help, which argparse answers alone
    from rich.console import Console

    from search.gpus import plan_workers

    # Off a terminal (CI, a log file) rich would wrap tables at 80 columns.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    try:
        check_backend(args.backend)
        plan = plan_workers(args.gpus, args.workers_per_gpu) if args.worker_index is None else None
        if plan is not None and plan.note:
            console.print(f"note: {plan.note}", highlight=False, soft_wrap=True)
        if plan is not None and plan.n_workers > 1:
            # this process loads data and may run baselines beside its workers on the GPUs:
            # it must not take their memory
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        elif plan is not None and len(plan.gpus) == 1:
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", plan.gpus[0])
        if args.tracking_uri is None:
            args.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        # the options that set `StudyConfig` fields carry the fields' names
        config = build_config(args.study, overrides=args.set, **{
            name: value for name, value in vars(args).items() if name in OPTIONS})
    except USER_ERRORS as exc:  # the study file and the options
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    # Keras, Optuna, MLflow: imported once the settings are valid (a mistake is answered in 0.1 s)
    from search.driver import run_study, run_worker
    from search.liveness import record_exit
    from search.stores import EXIT_STORE_LOST, store_lost_in

    # A worker stops once, whoever asks (the terminal's Ctrl-C, the launcher's SIGTERM, both);
    # the launcher keeps Python's Ctrl-C, so a second one still forces its way out.
    if args.worker_index is not None:
        stop_cleanly_on(signal.SIGINT, signal.SIGTERM)
        stop_with_launcher()
    else:
        remember_ctrl_c()
        stop_cleanly_on(signal.SIGTERM)
    _quiet_store_lost_in_threads()
    try:
        if args.worker_index is not None:
            return run_worker(config, worker_index=args.worker_index, data_dir=args.data_dir)
        outcome = run_study(config, console=console, data_dir=args.data_dir,
                            progress=not args.no_progress, plan=plan,
                            worker_argv=_worker_argv(argv))
    except UsageError as exc:  # the data, the stores, the model options
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        lost = store_lost_in(exc, config.storage)
        if lost is None and as_stop(exc) is not None:
            # a stop that a library turned into its own error where nothing caught it
            print("interrupted: rerun the same command to resume.", file=sys.stderr)
            return 130
        if lost is None:
            raise  # regsearch's own error: keep its traceback
        # the next run that opens the study gives this as the reason of a trial left RUNNING
        record_exit(str(lost))
        print(f"error: {lost}; {lost.advice}", file=sys.stderr)
        return EXIT_STORE_LOST
    return 130 if outcome.interrupted else 0


def _quiet_store_lost_in_threads() -> None:
    """Print no traceback for a store failure met by a thread (Optuna's heartbeat): the trial
    goes on, and the run stops in one line when its own next write meets the failure."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, StoreLost):
            default(args)

    threading.excepthook = hook


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line minus what only the launcher does (fresh start, baselines, GPU plan)."""
    group = next(g for g in parser()._action_groups if g.title == LAUNCHER_GROUP)
    # option -> how many values follow it
    launcher_only = {o: 0 if a.nargs == 0 else 1 for a in group._group_actions
                     for o in a.option_strings}
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in launcher_only:
            skip = launcher_only[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out + ["--no-progress"]


if __name__ == "__main__":
    sys.exit(main())
