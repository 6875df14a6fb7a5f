"""Sequential folds vs batched folds (k copies in one compiled step) vs batched recipes (B
recipes x k folds in one step): seconds, images/s, CV loss.

    python -m benchmarks.batched --study digits --trials 6 --epochs 15 --recipes-per-step 3
    KERAS_BACKEND=jax python -m benchmarks.batched --study tinyimagenet --trials 4 --epochs 10 \\
        --data-dir .gpu-data

The study's own training (`search.training.prepare_training`: model, one `Reuse` per process,
folds, class weight) trains the same recipes, drawn at random from the study's space, once with
`cross_validate`, once with `cross_validate_batched` and, in groups of ``--recipes-per-step``,
with `cross_validate_recipes`, group by group side by side (the order of the modes alternates
between groups), so every mode sees the same machine load. Early stopping is off by
default (patience = epochs): both modes train every epoch of every fold, and the comparison is
the same work. Per trial: wall seconds of the cross-validation call, training images per second
(each fold's training images x its epochs, the images that count; the batched mode also pushes
the other folds' samples through each copy with weight 0), and the CV loss reached. A trial of the
batched recipes is credited an equal share of its step's seconds. The first group's trials pay
each mode's compilation and are reported apart.

Results go to benchmarks/results/batched-<study>-<cpu|gpu>[-<backend>].{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

MODES = ("sequential", "batched", "recipes")


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
    p.add_argument("--recipes-per-step", type=int, default=3, metavar="B",
                   help="recipes per step of the third mode (default 3; 1 leaves it out)")
    p.add_argument("--render", metavar="RESULT.json",
                   help="only rewrite the Markdown of a saved result")
    args = p.parse_args()
    if args.render:
        _rerender(args.render)
        return
    per_step = args.recipes_per_step
    if per_step < 1:
        p.error("--recipes-per-step must be >= 1")
    if args.trials < 2 * per_step:
        p.error(f"--trials must be >= {2 * per_step}, two steps of --recipes-per-step "
                f"{per_step} (the first step's trials, which pay each mode's one compilation, "
                "are reported apart)")

    import keras
    import optuna

    from benchmarks._common import machine, write_result
    from search.config import build_config
    from search.datasets import load_data
    from search.recording import make_recipe
    from search.training import prepare_training
    from spaces.suggest import sample_params
    from trainers.batched import batch_size_for, cross_validate_batched, cross_validate_recipes
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

    modes = MODES if per_step > 1 else MODES[:2]
    rows: dict[str, list[dict]] = {mode: [] for mode in modes}

    def row(trial: int, result, seconds: float, images: float) -> dict:
        return {"trial": trial, "seconds": round(seconds, 3),
                "images_per_second": round(images, 1),
                "cv_val_loss": round(result.val_loss, 5),
                "fold_val_losses": [round(f.val_loss, 5) for f in result.folds],
                "epochs": [f.n_epochs for f in result.folds]}

    def images_of(result) -> int:  # the images that count: each fold's training part x epochs
        return sum(f.n_epochs * n for f, n in zip(result.folds, train_sizes))

    steps = [list(range(i, min(i + per_step, len(recipes))))
             for i in range(0, len(recipes), per_step)]
    for g, trials in enumerate(steps):
        for mode in (modes if g % 2 == 0 else modes[::-1]):
            if mode == "recipes":
                start = time.perf_counter()
                results = cross_validate_recipes(
                    data.train, training.folds, [recipes[t] for t in trials], training.models,
                    seed=config.seed, class_weight=training.class_weight, fail_at_chance=False)
                seconds = time.perf_counter() - start
                rate = sum(images_of(r) for r in results) / seconds
                for trial, result in zip(trials, results):
                    rows[mode].append(row(trial, result, seconds / len(trials), rate))
                    print(f"trial {trial} {mode:10s}: {seconds / len(trials):7.2f} s (a share of "
                          f"{seconds:.2f}), {rate:9.0f} images/s, CV loss {result.val_loss:.4f}",
                          flush=True)
                continue
            for trial in trials:
                start = time.perf_counter()
                result = train[mode](data.train, training.folds, recipes[trial], training.models,
                                     seed=config.seed, class_weight=training.class_weight,
                                     fail_at_chance=False)
                seconds = time.perf_counter() - start
                rows[mode].append(row(trial, result, seconds, images_of(result) / seconds))
                print(f"trial {trial} {mode:10s}: {seconds:7.2f} s, "
                      f"{images_of(result) / seconds:9.0f} images/s, CV loss "
                      f"{result.val_loss:.4f}", flush=True)

    backend = keras.config.backend()
    summary = {mode: _summary(r, per_step) for mode, r in rows.items()}
    summary["ratio"] = {}
    for mode in modes[1:]:
        later = [b["seconds"] / s["seconds"]
                 for s, b in zip(rows["sequential"][per_step:], rows[mode][per_step:])]
        losses = [b["cv_val_loss"] - s["cv_val_loss"]
                  for s, b in zip(rows["sequential"], rows[mode])]
        summary["ratio"][mode] = {
            "over_sequential_seconds_median": round(statistics.median(later), 3),
            "cv_loss_difference_mean": round(statistics.mean(losses), 5),
            "cv_loss_difference_abs_median": round(statistics.median(abs(d) for d in losses), 5),
        }
    if per_step > 1:  # the same computation, to float rounding (trainers.batched)
        summary["recipes_vs_batched_cv_loss_abs_max"] = round(max(
            abs(r["cv_val_loss"] - b["cv_val_loss"])
            for r, b in zip(rows["recipes"], rows["batched"])), 6)
    settings = {
        "study": args.study, "trials": args.trials, "epochs": args.epochs, "folds": args.folds,
        "seed": args.seed, "patience": patience, "set": args.set, "recipes_per_step": per_step,
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


def _summary(rows: list[dict], per_step: int) -> dict[str, float]:
    later = rows[per_step:]
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
    per_step = settings.get("recipes_per_step", 1)
    ratios = summary["ratio"]
    if "batched_over_sequential_seconds_median" in ratios:  # a result from before "recipes"
        ratios = {"batched": {"over_sequential_seconds_median":
                              ratios["batched_over_sequential_seconds_median"],
                              **{k: v for k, v in ratios.items() if k.startswith("cv_loss")}}}
    modes = [m for m in MODES if m in rows]
    command = (f"`{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}"
               f"python -m benchmarks.batched --study {settings['study']} "
               f"--trials {settings['trials']} --epochs {settings['epochs']} "
               f"--folds {settings['folds']} --seed {settings['seed']}"
               + (f" --recipes-per-step {per_step}" if "recipes_per_step" in settings else "")
               + (f" --patience {settings['patience']}"
                  if settings["patience"] != settings["epochs"] else "")
               + "".join(f" --set {s}" for s in settings["set"])
               + (" --data-dir DIR" if settings.get("data_dir") else "") + "`")
    k = settings["folds"]
    on_gpu = "gpu" in result["machine"]
    names = {"sequential": "sequential folds", "batched": f"batched folds ({k} copies)",
             "recipes": f"batched recipes ({per_step} x {k} copies)"}
    lines = [
        f"# Sequential folds vs batched folds vs batched recipes: `{settings['study']}` "
        f"({backend})" if "recipes" in rows else
        f"# Sequential vs batched folds: `{settings['study']}` ({backend})",
        "",
        command,
        "",
        (f"{settings['trials']} recipes drawn at random from the study's space, each trained by "
         f"every mode side by side (the order of the modes alternating), {k} folds over "
         f"{settings['train_images']} images, {settings['epochs']} epochs, patience "
         f"{settings['patience']}. Batch {settings['batch_size']} sequential; "
         f"{settings['batched_batch_size']} batched (each copy counts about "
         f"{settings['batch_size']} of them). images/s: each fold's training images x its "
         "epochs over the wall seconds (for batched recipes, those of every recipe of the "
         "step; a trial's seconds are its equal share of the step). Later trials: median of "
         f"the trials after the first {per_step} (they pay each mode's one compilation). On a "
         "shared machine the absolute figures move with the load; the per-trial ratio, "
         "measured side by side, is the one to read."),
        "",
        "| mode | first trial | later trials: seconds | later: images/s | mean CV loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode in modes:
        s = summary[mode]
        lines.append(f"| {names[mode]} | {s['first_trial_seconds']:.2f} s | "
                     f"{s['later_seconds_median']:.2f} s | "
                     f"{s['later_images_per_second_median']:.0f} | {s['cv_val_loss_mean']:.4f} |")
    lines.append("")
    for mode in modes[1:]:
        ratio = ratios[mode]
        lines.append(
            f"{names[mode].capitalize()} over sequential folds, seconds per trial (median of the "
            f"later trials' ratios): **{ratio['over_sequential_seconds_median']:.2f}x**. CV "
            f"loss minus sequential: mean {ratio['cv_loss_difference_mean']:+.4f}, median "
            f"absolute {ratio['cv_loss_difference_abs_median']:.4f}.")
    if "recipes_vs_batched_cv_loss_abs_max" in summary:
        lines.append(
            f"Batched recipes vs each recipe's batched folds alone (the same computation, to "
            f"float rounding): largest CV loss difference "
            f"{summary['recipes_vs_batched_cv_loss_abs_max']:.2g}.")
    lines += [
        "",
        "| trial | " + " | ".join(f"{m} s" for m in modes) + " | "
        + " | ".join(f"{m} CV loss" for m in modes) + " |",
        "| --- " * (1 + 2 * len(modes)) + "|",
    ]
    for trial_rows in zip(*(rows[m] for m in modes)):
        lines.append(f"| {trial_rows[0]['trial']} | "
                     + " | ".join(f"{r['seconds']:.2f}" for r in trial_rows) + " | "
                     + " | ".join(f"{r['cv_val_loss']:.4f}" for r in trial_rows) + " |")
    if not on_gpu:
        lines += [
            "",
            (f"What this CPU figure can and cannot say about a GPU. Batched folds push every "
             f"sample through all {k} copies, the samples a copy does not learn from included, "
             f"so an epoch costs {k}/{k - 1} = {k / (k - 1):.2f}x the arithmetic of sequential "
             "folds; batched recipes cost the same per trial, B trials at a time. A CPU is busy "
             "with arithmetic at any batch size (a few cores, no launch overhead to hide), so "
             "here batching can only save Python and `fit` overhead per fold and pays the extra "
             "arithmetic in full: the ratios above are close to a worst case. On a GPU a small "
             "model's step is bound by kernel launches and per-step work, not FLOPs (about "
             "50,000 images/s against a 565,000 arithmetic limit for the reference CNN on an "
             f"H100), and k copies give each step k times the work, B x k copies B x k times; "
             "whether that outweighs the extra arithmetic is what the GPU command in "
             "benchmarks/GPU.md measures. The CV losses, on the other hand, transfer: they "
             "show what the changed batch composition does to the score."),
        ]
    return "\n".join(lines) + "\n\n" + machine_table(result["machine"])


if __name__ == "__main__":
    main()
