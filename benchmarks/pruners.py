"""Compare pruners on one study: best CV loss reached and epochs trained for the same trial budget.

    python benchmarks/pruners.py --trials 16 --epochs 15
    python -m benchmarks.pruners --fold-mode batched --batched-pruning fold-end epoch --pruners median

With batched folds, ``--batched-pruning`` compares what the pruner judges (fold ends, or every
fold's mean each epoch); those results go to pruners-<study>-batched.

Epochs trained (not seconds) is the cost, so the figures do not depend on how busy the
machine is. Results go to benchmarks/results/pruners-<study>.{json,md}.
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
    study_arguments(p, trials=16, epochs=15, folds=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--pruners", nargs="+", default=["hyperband", "sha", "median", "none"])
    p.add_argument("--fold-mode", choices=("sequential", "batched"), default="sequential")
    p.add_argument("--batched-pruning", nargs="+", default=["fold-end"],
                   choices=("fold-end", "epoch"))
    args = p.parse_args()
    batched = args.fold_mode == "batched"
    name = f"pruners-{args.study}" + ("-batched" if batched else "")

    from optuna.trial import TrialState

    from search.config import build_config
    from search.driver import run_study
    from search.names import EPOCHS_TRAINED

    rows = []
    for seed in args.seeds:
        for pruner in args.pruners:
            for judged in (args.batched_pruning if batched else ["fold-end"]):
                with tempfile.TemporaryDirectory() as tmp:
                    config = build_config(
                        args.study, n_trials=args.trials, max_epochs=args.epochs,
                        n_folds=args.folds, pruner=pruner, seed=seed,
                        storage=f"sqlite:///{tmp}/optuna.db",
                        tracking_uri=f"sqlite:///{tmp}/mlflow.db", fold_mode=args.fold_mode,
                        batched_pruning=judged,
                    )
                    start = time.perf_counter()
                    outcome = run_study(config, progress=False, data_dir=args.data_dir)
                    wall = time.perf_counter() - start
                trials = outcome.study.trials
                rows.append({
                    "pruner": pruner, "seed": seed, "fold_mode": args.fold_mode,
                    "judged": judged,
                    "best_cv_val_loss": outcome.study.best_value,
                    "epochs_trained": int(sum(t.user_attrs.get(EPOCHS_TRAINED, 0)
                                              for t in trials)),
                    "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                    "failed": sum(t.state == TrialState.FAIL for t in trials),
                    "wall_seconds": round(wall, 1),
                })
                print(rows[-1], flush=True)
                write(args, name, rows)


def write(args, name: str, rows: list[dict]) -> None:  # noqa: ANN001
    """Write the rows so far (after each study: a long run stopped keeps what it did)."""
    from benchmarks._common import machine, machine_table, write_result

    batched = args.fold_mode == "batched"
    full = args.trials * args.folds * args.epochs
    lines = [f"| {r['pruner']} |" + (f" {r['judged']} |" if batched else "")
             + f" {r['seed']} | {r['best_cv_val_loss']:.4f} | {r['epochs_trained']} "
             f"({100 * r['epochs_trained'] / full:.0f}%) | {r['pruned']} | {r['failed']} | "
             f"{r['wall_seconds']} |" for r in rows]
    md = (
        f"# Pruners on `{args.study}`{' with batched folds' if batched else ''}: {args.trials} "
        f"trials, {args.folds} folds, {args.epochs} epochs at most\n\n"
        f"`python -m benchmarks.pruners --study {args.study} --trials {args.trials} "
        f"--epochs {args.epochs} --folds {args.folds} --seeds {' '.join(map(str, args.seeds))} "
        f"--pruners {' '.join(args.pruners)}"
        + (f" --fold-mode batched --batched-pruning {' '.join(args.batched_pruning)}"
           if batched else "") + "`\n\n"
        f"Epochs trained counts every reported epoch of every fold (early stopping included); "
        f"{full} would be every trial training every fold to the epoch limit.\n\n"
        f"| pruner |{' judged |' if batched else ''} seed | best cv val_loss | epochs trained | "
        f"pruned | failed | wall s |\n"
        f"| --- |{' --- |' if batched else ''} --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(lines) + "\n\n" + machine_table(machine())
    )
    print(md)
    print(f"written: {write_result(name, {'rows': rows, 'machine': machine()}, md)}")


if __name__ == "__main__":
    main()
