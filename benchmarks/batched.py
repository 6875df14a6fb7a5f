"""Sequential folds vs batched folds (k copies in one compiled step): seconds, images/s, CV loss.

    python -m benchmarks.batched --study digits --trials 6 --epochs 30
    KERAS_BACKEND=jax python -m benchmarks.batched --study tinyimagenet --trials 4 --epochs 10 \\
        --data-dir .gpu-data

The study's own training (`search.training.prepare_training`: model, one `Reuse` per process,
folds, class weight) trains the same recipes, drawn at random from the study's space, once with
`cross_validate` and once with `cross_validate_batched`, trial by trial side by side (the order
alternates between trials), so both modes see the same machine load. Early stopping is off by
default (patience = epochs): both modes train every epoch of every fold, and the comparison is
the same work. Per trial: wall seconds of the cross-validation call, training images per second
(each fold's training images x its epochs, the images that count; the batched mode also pushes
the other folds' samples through each copy with weight 0), and the CV loss reached. The first
trial of each mode pays its compilation and is reported apart.

Results go to benchmarks/results/batched-<study>-<cpu|gpu>[-<backend>].{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

MODES = ("sequential", "batched")


def main() -> None:
    from benchmarks._common import study_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(p, trials=6, epochs=30, folds=3)
    p.add_argument("--seed", type=int, default=0, help="study seed (folds, weights, recipes)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience of every recipe (default: --epochs, i.e. no "
                        "early stopping, so both modes train the same epochs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an entry of the study file (repeatable)")
    args = p.parse_args()
    if args.trials < 2:
        p.error("--trials must be >= 2 (the first trial of each mode is reported apart)")

    import keras
    import optuna

    from benchmarks._common import machine, machine_table, write_result
    from search.config import build_config
    from search.datasets import load_data
    from search.recording import make_recipe
    from search.training import prepare_training
    from spaces.suggest import sample_params
    from trainers.batched import batch_size_for, cross_validate_batched
    from trainers.fit import cross_validate

    config = build_config(args.study, max_epochs=args.epochs, n_folds=args.folds,
                          seed=args.seed, overrides=args.set)
    data = load_data(config.spec.data, where=str(config.spec.path), seed=config.seed,
                     data_dir=args.data_dir, progress=False)
    training = prepare_training(config, data)
    patience = args.patience or args.epochs
    sampler = optuna.samplers.RandomSampler(seed=args.seed)
    draw = optuna.create_study(sampler=sampler)
    recipes = [make_recipe(config, sample_params(config.spec.space, draw.ask())).replace(
        patience=patience) for _ in range(args.trials)]
    train_sizes = [len(f.train) for f in training.folds]
    train = {"sequential": cross_validate, "batched": cross_validate_batched}

    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for trial, recipe in enumerate(recipes):
        order = MODES if trial % 2 == 0 else MODES[::-1]
        for mode in order:
            start = time.perf_counter()
            result = train[mode](data.train, training.folds, recipe, training.models,
                                 seed=config.seed, class_weight=training.class_weight,
                                 fail_at_chance=False)
            seconds = time.perf_counter() - start
            images = sum(f.n_epochs * n for f, n in zip(result.folds, train_sizes))
            rows[mode].append({
                "trial": trial, "seconds": round(seconds, 3),
                "images_per_second": round(images / seconds, 1),
                "cv_val_loss": round(result.val_loss, 5),
                "fold_val_losses": [round(f.val_loss, 5) for f in result.folds],
                "epochs": [f.n_epochs for f in result.folds],
            })
            print(f"trial {trial} {mode:10s}: {seconds:7.2f} s, {images / seconds:9.0f} images/s,"
                  f" CV loss {result.val_loss:.4f}", flush=True)

    backend = keras.config.backend()
    summary = {mode: _summary(r) for mode, r in rows.items()}
    later = [b["seconds"] / s["seconds"] for s, b in zip(rows["sequential"][1:], rows["batched"][1:])]
    losses = [b["cv_val_loss"] - s["cv_val_loss"] for s, b in zip(rows["sequential"], rows["batched"])]
    summary["ratio"] = {
        "batched_over_sequential_seconds_median": round(statistics.median(later), 3),
        "cv_loss_difference_mean": round(statistics.mean(losses), 5),
        "cv_loss_difference_abs_median": round(statistics.median(abs(d) for d in losses), 5),
    }
    settings = {
        "study": args.study, "trials": args.trials, "epochs": args.epochs, "folds": args.folds,
        "seed": args.seed, "patience": patience, "set": args.set,
        "batch_size": recipes[0].batch_size,
        "batched_batch_size": batch_size_for(recipes[0].batch_size, len(data.train), train_sizes),
        "train_images": len(data.train), "model": dict(config.spec.model),
    }
    result = {"settings": settings, "summary": summary, "trials": rows,
              "recipes": [r.to_dict() for r in recipes], "machine": machine()}
    md = _markdown(args, backend, settings, summary, rows) + "\n" + machine_table(result["machine"])
    print(md)
    where = "gpu" if "gpu" in result["machine"] else "cpu"
    name = f"batched-{args.study}-{where}" + ("" if backend == "tensorflow" else f"-{backend}")
    print(f"written: {write_result(name, result, md)}")


def _summary(rows: list[dict]) -> dict[str, float]:
    later = rows[1:]
    return {
        "first_trial_seconds": rows[0]["seconds"],
        "later_seconds_median": round(statistics.median(r["seconds"] for r in later), 3),
        "later_images_per_second_median": round(
            statistics.median(r["images_per_second"] for r in later), 1),
        "cv_val_loss_mean": round(statistics.mean(r["cv_val_loss"] for r in rows), 5),
    }


def _markdown(args, backend: str, settings: dict, summary: dict, rows: dict) -> str:
    command = (f"`{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}"
               f"python -m benchmarks.batched --study {args.study} --trials {args.trials} "
               f"--epochs {args.epochs} --folds {args.folds} --seed {args.seed}"
               + (f" --patience {args.patience}" if args.patience else "")
               + "".join(f" --set {s}" for s in args.set)
               + (" --data-dir DIR" if args.data_dir else "") + "`")
    ratio = summary["ratio"]
    lines = [
        f"# Sequential vs batched folds: `{args.study}` ({backend})",
        "",
        command,
        "",
        (f"{args.trials} recipes drawn at random from the study's space, each trained by both "
        f"modes side by side (order alternating), {args.folds} folds of "
        f"{settings['train_images']} training images, {args.epochs} epochs, patience "
        f"{settings['patience']}. Batch {settings['batch_size']} sequential; "
        f"{settings['batched_batch_size']} batched (each copy counts about "
        f"{settings['batch_size']} of them). images/s: each fold's training images x its epochs "
        "over the trial's wall seconds. Later trials: median of trials 2 and on (the first "
        "pays each mode's one compilation)."),
        "",
        "| mode | first trial | later trials: seconds | later: images/s | mean CV loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        s = summary[mode]
        lines.append(f"| {mode} | {s['first_trial_seconds']:.2f} s | "
                     f"{s['later_seconds_median']:.2f} s | "
                     f"{s['later_images_per_second_median']:.0f} | {s['cv_val_loss_mean']:.4f} |")
    lines += [
        "",
        (f"Batched over sequential, seconds per trial (median of the later trials' ratios): "
        f"**{ratio['batched_over_sequential_seconds_median']:.2f}x**. CV loss, batched minus "
        f"sequential: mean {ratio['cv_loss_difference_mean']:+.4f}, median absolute "
        f"{ratio['cv_loss_difference_abs_median']:.4f}."),
        "",
        "| trial | sequential s | batched s | sequential CV loss | batched CV loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s, b in zip(rows["sequential"], rows["batched"]):
        lines.append(f"| {s['trial']} | {s['seconds']:.2f} | {b['seconds']:.2f} | "
                     f"{s['cv_val_loss']:.4f} | {b['cv_val_loss']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
