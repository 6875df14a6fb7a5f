"""Compare pruners on one study: best CV loss reached and epochs trained for the same trial budget.

    python benchmarks/pruners.py --trials 16 --epochs 15

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
    args = p.parse_args()

    from optuna.trial import TrialState

    from benchmarks._common import machine, machine_table, write_result
    from search.config import build_config
    from search.driver import run_study
    from search.names import EPOCHS_TRAINED

    rows = []
    for seed in args.seeds:
        for pruner in args.pruners:
            with tempfile.TemporaryDirectory() as tmp:
                config = build_config(
                    args.study, n_trials=args.trials, max_epochs=args.epochs, n_folds=args.folds,
                    pruner=pruner, seed=seed, storage=f"sqlite:///{tmp}/optuna.db",
                    tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                )
                start = time.perf_counter()
                outcome = run_study(config, progress=False, data_dir=args.data_dir)
                wall = time.perf_counter() - start
            trials = outcome.study.trials
            rows.append({
                "pruner": pruner, "seed": seed,
                "best_cv_val_loss": outcome.study.best_value,
                "epochs_trained": int(sum(t.user_attrs.get(EPOCHS_TRAINED, 0) for t in trials)),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "wall_seconds": round(wall, 1),
            })
            print(rows[-1], flush=True)
    full = args.trials * args.folds * args.epochs
    lines = [f"| {r['pruner']} | {r['seed']} | {r['best_cv_val_loss']:.4f} | {r['epochs_trained']} "
             f"({100 * r['epochs_trained'] / full:.0f}%) | {r['pruned']} | {r['failed']} | "
             f"{r['wall_seconds']} |" for r in rows]
    md = (
        f"# Pruners on `{args.study}`: {args.trials} trials, {args.folds} folds, "
        f"{args.epochs} epochs at most\n\n"
        f"`python benchmarks/pruners.py --study {args.study} --trials {args.trials} "
        f"--epochs {args.epochs} --folds {args.folds} --seeds {' '.join(map(str, args.seeds))}`\n\n"
        f"Epochs trained counts every reported epoch of every fold (early stopping included); "
        f"{full} would be every trial training every fold to the epoch limit.\n\n"
        f"| pruner | seed | best cv val_loss | epochs trained | pruned | failed | wall s |\n"
        f"| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines) + "\n\n"
        + machine_table(machine())
    )
    print(md)
    print(f"written: {write_result(f'pruners-{args.study}', {'rows': rows, 'machine': machine()}, md)}")


if __name__ == "__main__":
    main()
