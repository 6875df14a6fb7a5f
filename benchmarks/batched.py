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
    p.add_argument("--render", metavar="RESULT.json",
                   help="only rewrite the Markdown of a saved result")
    args = p.parse_args()
    if args.render:
        _rerender(args.render)
        return
    if args.trials < 2:
        p.error("--trials must be >= 2 (the first trial of each mode is reported apart)")

    import keras
    import optuna

    from benchmarks._common import machine, write_result
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
        "data_dir": bool(args.data_dir), "backend": backend,
    }
    result = {"settings": settings, "summary": summary, "trials": rows,
              "recipes": [r.to_dict() for r in recipes], "machine": machine()}
    md = _markdown(result)
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


def _rerender(path: str) -> None:
    import json
    from pathlib import Path

    result = json.loads(Path(path).read_text())
    Path(path).with_suffix(".md").write_text(_markdown(result))
    print(f"written: {Path(path).with_suffix('.md')}")


def _markdown(result: dict) -> str:
    from benchmarks._common import machine_table

    settings, summary, rows = result["settings"], result["summary"], result["trials"]
    backend = settings.get("backend") or result["machine"].get("keras_backend", "tensorflow")
    command = (f"`{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}"
               f"python -m benchmarks.batched --study {settings['study']} "
               f"--trials {settings['trials']} --epochs {settings['epochs']} "
               f"--folds {settings['folds']} --seed {settings['seed']}"
               + (f" --patience {settings['patience']}"
                  if settings["patience"] != settings["epochs"] else "")
               + "".join(f" --set {s}" for s in settings["set"])
               + (" --data-dir DIR" if settings.get("data_dir") else "") + "`")
    ratio = summary["ratio"]
    k = settings["folds"]
    on_gpu = "gpu" in result["machine"]
    lines = [
        f"# Sequential vs batched folds: `{settings['study']}` ({backend})",
        "",
        command,
        "",
        (f"{settings['trials']} recipes drawn at random from the study's space, each trained by "
         f"both modes side by side (order alternating), {k} folds over "
         f"{settings['train_images']} images, {settings['epochs']} epochs, patience "
         f"{settings['patience']}. Batch {settings['batch_size']} sequential; "
         f"{settings['batched_batch_size']} batched (each copy counts about "
         f"{settings['batch_size']} of them). images/s: each fold's training images x its "
         "epochs over the trial's wall seconds. Later trials: median of trials 2 and on (the "
         "first pays each mode's one compilation). On a shared machine the absolute figures "
         "move with the load; the per-trial ratio, measured side by side, is the one to read."),
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
    if not on_gpu:
        lines += [
            "",
            (f"What this CPU figure can and cannot say about a GPU. Batched folds push every "
             f"sample through all {k} copies, the samples a copy does not learn from included, "
             f"so an epoch costs {k}/{k - 1} = {k / (k - 1):.2f}x the arithmetic of sequential "
             "folds. A CPU is busy with arithmetic at any batch size (a few cores, no launch "
             "overhead to hide), so here batching can only save Python and `fit` overhead per "
             "fold and pays the extra arithmetic in full: the ratio above is close to a worst "
             "case. On a GPU a small model's step is bound by kernel launches and per-step "
             "work, not FLOPs (about 50,000 images/s against a 565,000 arithmetic limit for "
             "the reference CNN on an H100), and k copies give each step k times the work; "
             "whether that outweighs the extra arithmetic is what the GPU command in "
             "benchmarks/GPU.md measures. The CV losses, on the other hand, transfer: they "
             "show what the changed batch composition does to the score."),
        ]
    return "\n".join(lines) + "\n\n" + machine_table(result["machine"])


if __name__ == "__main__":
    main()
