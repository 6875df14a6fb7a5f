"""The four-key space against the extended space on `digits`: held-out loss of what each selects.

For each seed, the same study is run twice with the same trial budget, folds and epochs: once
with the built-in space (l1, l2, dropout, augment, patience) and once with weight_decay,
label_smoothing, mixup and cutmix added (each with "off" as its own point). The selected
recipe of each is retrained on the whole training split (80%) for its folds' mean best epoch
count and scored once on the held-out 20%; the table says which later keys it turned on and
how many seconds the study's trials took in all. ``--root`` keeps the stores: a rerun resumes
the searches it finds there and only retrains.

    python -m benchmarks.extended --seeds 0 1 2 3 4 --trials 30 --epochs 30 --folds 3

writes benchmarks/results/extended-digits.{json,md} (or under $BENCH_OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, machine, machine_table, study_arguments, write_result

LATER = ("weight_decay", "label_smoothing", "mixup", "cutmix")
EXTENDED = [
    "space.weight_decay={low: 1.0e-3, high: 0.3, log: true, allow_off: true, default: off}",
    "space.label_smoothing={low: 0.01, high: 0.3, allow_off: true, default: off}",
    "space.mixup={low: 0.1, high: 1.0, log: true, allow_off: true, default: off}",
    "space.cutmix={low: 0.1, high: 2.0, log: true, allow_off: true, default: off}",
]


def run_one(args: argparse.Namespace, seed: int, space: str, root: Path) -> dict[str, Any]:
    """Search one space with one seed, retrain the selected recipe, score the held-out split."""
    from search.config import build_config
    from search.datasets import load_data
    from search.driver import run_study
    from search.names import BEST_EPOCHS_ATTR, RECIPE_ATTR
    from search.report import final_epochs
    from search.selection import selected_trial
    from search.training import prepare_training
    from trainers.fit import train_final
    from trainers.recipe import Recipe

    overrides = [f"data.heldout_fraction={args.heldout}", *args.set,
                 *(EXTENDED if space == "extended" else [])]
    folder = root / f"{space}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    config = build_config(args.study, n_trials=args.trials, n_folds=args.folds,
                          max_epochs=args.epochs, seed=seed, overrides=overrides,
                          storage=f"sqlite:///{folder}/optuna.db",
                          tracking_uri=f"sqlite:///{folder}/mlflow.db", report=False)
    outcome = run_study(config, progress=False, data_dir=args.data_dir)
    # from the trials themselves, so a study resumed from --root still reports its search time
    search_seconds = sum((t.datetime_complete - t.datetime_start).total_seconds()
                         for t in outcome.study.trials if t.datetime_complete and t.datetime_start)
    best = selected_trial(outcome.study)
    if best is None:
        return {"seed": seed, "space": space, "selected": None, "search_seconds": search_seconds}
    data = load_data(config.spec.data, where=args.study, seed=seed, data_dir=args.data_dir,
                     progress=False)
    training = prepare_training(config, data)
    recipe = Recipe.from_dict(best.user_attrs[RECIPE_ATTR])
    epochs = final_epochs(best.user_attrs[BEST_EPOCHS_ATTR])
    final = train_final(data.train, data.heldout, recipe, training.models, epochs=epochs,
                        seed=seed)
    return {"seed": seed, "space": space, "selected": best.number, "cv_val_loss": best.value,
            "heldout_loss": final.heldout_loss, "heldout_accuracy": final.heldout_accuracy,
            "epochs": epochs, "recipe": recipe.to_dict(),
            "turned_on": [key for key in LATER if getattr(recipe, key) > 0],
            "n_trials": len(outcome.study.trials), "search_seconds": search_seconds}


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [f"# Four-key space against the extended space: `{result['study']}`", "",
             f"`{result['command']}`", "",
             (f"Each seed: the same study ({result['trials']} trials, {result['folds']} folds, "
              f"at most {result['epochs']} epochs) with each space; the selected recipe "
              f"retrained on the training split and scored once on the held-out "
              f"{result['heldout']:.0%}."), "",
             ("| seed | space | selected trial | cv val_loss | held-out loss | held-out acc | "
              "later keys on | trial s |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["selected"] is None:
            lines.append(f"| {r['seed']} | {r['space']} | none beat chance | | | | | "
                         f"{r['search_seconds']:.0f} |")
            continue
        lines.append(f"| {r['seed']} | {r['space']} | {r['selected']} | {r['cv_val_loss']:.4f} | "
                     f"{r['heldout_loss']:.4f} | {r['heldout_accuracy']:.3f} | "
                     f"{', '.join(r['turned_on']) or '-'} | {r['search_seconds']:.0f} |")
    lines.append("")
    for space in ("four", "extended"):
        losses = [r["heldout_loss"] for r in rows if r["space"] == space and r["selected"] is not None]
        if losses:
            lines.append(f"- {space}: median held-out loss {statistics.median(losses):.4f} over "
                         f"{len(losses)} seed(s)")
    pairs = [(a["heldout_loss"], b["heldout_loss"]) for a in rows for b in rows
             if a["seed"] == b["seed"] and a["space"] == "four" and b["space"] == "extended"
             and a["selected"] is not None and b["selected"] is not None]
    if pairs:
        wins = sum(b < a for a, b in pairs)
        lines.append(f"- the extended space's selection had the lower held-out loss in {wins} of "
                     f"{len(pairs)} seeds (median difference extended minus four: "
                     f"{statistics.median(b - a for a, b in pairs):+.4f})")
    if len(pairs) >= 5:  # below 5 pairs the signed-rank test cannot reach p < 0.05
        from scipy.stats import wilcoxon

        test = wilcoxon([b - a for a, b in pairs], alternative="less")
        lines.append(f"- Wilcoxon signed-rank test over seeds, extended lower than four: "
                     f"p = {test.pvalue:.3f} (one-sided; a p above 0.05 means the seeds do not "
                     f"show a difference beyond seed-to-seed noise)")
    lines += ["", machine_table(result["machine"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(parser, trials=30, epochs=30, folds=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--root", help="folder for the stores (default: a temporary one)")
    parser.add_argument("--keep-others", action="store_true",
                        help="keep the result file's rows of seeds not given in --seeds")
    args = parser.parse_args(argv)

    name = f"extended-{args.study}"
    kept: list[dict[str, Any]] = []
    previous = Path(os.environ.get("BENCH_OUT", RESULTS)) / f"{name}.json"
    if args.keep_others and previous.exists():
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["seed"] not in args.seeds]
    root = Path(args.root or tempfile.mkdtemp(prefix="regsearch-extended-"))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:  # written after each seed: a long run stopped keeps what it did
        rows += [run_one(args, seed, space, root) for space in ("four", "extended")]
        every = sorted(kept + rows, key=lambda r: (r["seed"], r["space"] != "four"))
        seeds = sorted({r["seed"] for r in every})
        result = {"study": args.study, "trials": args.trials, "folds": args.folds,
                  "epochs": args.epochs, "heldout": args.heldout, "seeds": seeds,
                  "command": (f"python -m benchmarks.extended --seeds {' '.join(map(str, seeds))}"
                              f" --trials {args.trials} --epochs {args.epochs} "
                              f"--folds {args.folds}"),
                  "rows": every, "machine": machine()}
        text = markdown(result)
        write_result(name, result, text)
        print(text)


if __name__ == "__main__":
    main()
