"""How much of a study's wall time is spent inside Keras `fit`, and how much around it.

    python benchmarks/overhead.py --trials 6 --epochs 10

Runs the digits study into a temporary store and reports the overhead ratio: wall time of the
whole study (data, Optuna, MLflow, model building and compiling, plots) over the time inside
`model.fit`. Results go to benchmarks/results/overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    from benchmarks._common import study_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(p, trials=6, epochs=10, folds=3)
    p.add_argument("--rebuild-per-trial", action="store_true",
                   help="build and compile a fresh model per fold (the path before reuse)")
    args = p.parse_args()

    from benchmarks._common import machine, machine_table, write_result
    from search.config import build_config
    from search.driver import run_study
    from search.names import EPOCHS_TRAINED, FIT_SECONDS

    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(
            args.study, n_trials=args.trials, max_epochs=args.epochs, n_folds=args.folds,
            pruner="none", storage=f"sqlite:///{tmp}/optuna.db",
            tracking_uri=f"sqlite:///{tmp}/mlflow.db", rebuild_per_trial=args.rebuild_per_trial,
        )
        start = time.perf_counter()
        outcome = run_study(config, progress=False, data_dir=args.data_dir)
        wall = time.perf_counter() - start
    trials = outcome.study.trials
    fit = sum(t.user_attrs.get(FIT_SECONDS, 0.0) for t in trials)
    epochs = int(sum(t.user_attrs.get(EPOCHS_TRAINED, 0) for t in trials))
    mode = "rebuild per fold" if args.rebuild_per_trial else "one compiled model reused"
    result = {
        "study": args.study, "models": mode, "trials": len(trials), "folds": args.folds, "max_epochs": args.epochs,
        "epochs_trained": epochs, "wall_seconds": round(wall, 2), "fit_seconds": round(fit, 2),
        "outside_fit_seconds": round(wall - fit, 2),
        "overhead_ratio": round(wall / fit, 3), "fit_share": round(fit / wall, 3),
        "machine": machine(),
    }
    md = (
        f"# Study overhead: time inside Keras fit vs everything else\n\n"
        f"`python benchmarks/overhead.py --study {args.study} --trials {args.trials} "
        f"--epochs {args.epochs} --folds {args.folds}"
        f"{' --rebuild-per-trial' if args.rebuild_per_trial else ''}` (no pruning, so every "
        f"trial trains in full; models: {mode})\n\n"
        f"| figure | value |\n| --- | --- |\n"
        f"| trials x folds | {len(trials)} x {args.folds} |\n"
        f"| epochs trained | {epochs} |\n"
        f"| study wall time | {wall:.1f} s |\n"
        f"| inside `model.fit` | {fit:.1f} s ({100 * fit / wall:.0f}%) |\n"
        f"| outside `fit` (data, Optuna, MLflow, building, plots) | {wall - fit:.1f} s |\n"
        f"| **overhead ratio** (wall / fit) | **{wall / fit:.3f}** |\n\n"
        f"Compiling happens on the first batch of a `fit`, so it counts as inside `fit` here.\n\n"
        + machine_table(result["machine"])
    )
    print(md)
    name = f"overhead-{args.study}" + ("-rebuild" if args.rebuild_per_trial else "")
    print(f"written: {write_result(name, result, md)}")


if __name__ == "__main__":
    main()
