"""Command line: run or resume a study. ``python -m search.run --study digits``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from spaces import PRUNERS, SAMPLERS, builtin_studies

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Search the regularization recipe (L1/L2, dropout, augmentation, "
                    "early-stopping patience) that lowers k-fold validation loss.",
    )
    p.add_argument("--study", required=True,
                   help=f"built-in study ({', '.join(builtin_studies())}) or a study .yaml file")
    p.add_argument("--trials", type=int, dest="n_trials",
                   help="trial budget for the whole study, counted across runs (default: study file)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--folds", type=int, dest="n_folds", help="cross-validation folds (>= 2)")
    p.add_argument("--epochs", type=int, dest="max_epochs", help="maximum epochs per fold")
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default: tpe)")
    p.add_argument("--pruner", choices=PRUNERS, help="Optuna pruner (default: hyperband)")
    p.add_argument("--seed", type=int, help="study seed: folds, sampler, initial weights")
    p.add_argument("--storage", help="Optuna storage URL or journal file "
                                     "(default: sqlite:///mlruns/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                          "or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--data-dir", help="folder of the study's images (overrides the study file)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an entry of the study file, e.g. --set data.n_classes=10 "
                        "--set model.name=small_resnet (repeatable)")
    p.add_argument("--baselines", metavar="SET",
                   help="also cross-validate a set of hand-picked recipes ('reference': the five "
                        "of the reference report), logged as child runs tagged 'baseline'")
    p.add_argument("--no-report", action="store_true",
                   help="skip retraining the selected recipe and baselines on the whole training "
                        "split and scoring the held-out split")
    p.add_argument("--fresh", action="store_true",
                   help="delete the stored study and start over instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # TensorFlow prints C++ start-up notices unless told before its first import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow 2.21's oneDNN CPU kernels segfault on the small ResNet (strided 1x1
    # convolution + batch norm); the plain kernels are correct.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from rich.console import Console

    from search.config import build_config

    # Off a terminal (CI, a log file) rich would wrap tables at 80 columns.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    try:
        config = build_config(
            args.study, n_trials=args.n_trials, n_folds=args.n_folds, max_epochs=args.max_epochs,
            sampler=args.sampler, pruner=args.pruner, seed=args.seed, storage=args.storage,
            tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
            timeout=args.timeout, fresh=args.fresh, overrides=args.set,
            baselines=args.baselines, report=not args.no_report,
        )
        from search.driver import run_study  # imports Keras: only once the settings are valid

        outcome = run_study(config, console=console, data_dir=args.data_dir,
                            progress=not args.no_progress)
    except (LookupError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return 130 if outcome.interrupted else 0


def _message(exc: BaseException) -> str:
    text = str(exc)
    return text[1:-1] if isinstance(exc, KeyError) and text.startswith("'") else text


if __name__ == "__main__":
    sys.exit(main())
