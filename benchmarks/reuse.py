"""Time from trial start to the first training step: a model rebuilt per trial vs one reused.

    python -m benchmarks.reuse --model seed_cnn --width 0.125 --shape 32 32 3 --trials 5
    KERAS_BACKEND=jax python -m benchmarks.reuse --model seed_cnn --shape 64 64 3 --images 2048

Each trial draws a recipe (l1, l2, dropout, augmentation, learning rate), asks a `Rebuild` or a
`Reuse` for a model (seeds cycle over ``--folds``, as the folds of a study do) and trains it for
one epoch on random images with a validation set. "first step" is the time from the trial's
start to the end of its first training step (the step's loss read back, so it has really run):
building, compiling, tracing and resetting included. The first trial is reported on its own:
it is where `Reuse` pays its single compile. Results go to
benchmarks/results/reuse-<backend>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="seed_cnn")
    p.add_argument("--width", type=float, default=None, help="width multiplier (CNNs)")
    p.add_argument("--units", type=int, default=None, help="hidden units (mlp)")
    p.add_argument("--hidden-layers", type=int, default=None, help="hidden layers (mlp)")
    p.add_argument("--shape", type=int, nargs=3, default=(32, 32, 3), metavar=("H", "W", "C"))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", type=int, default=512, help="training images per trial")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=5, help="trials per mode, the first included")
    p.add_argument("--folds", type=int, default=2, help="seeds cycle over this many folds")
    p.add_argument("--jit", choices=("auto", "true", "false"), default="auto")
    p.add_argument("--modes", nargs="+", choices=("rebuild", "reuse"), default=["rebuild", "reuse"])
    args = p.parse_args()
    if args.trials < 2:
        p.error("--trials must be >= 2 (the first trial is reported apart from the others)")

    from benchmarks._common import machine, machine_table, write_result
    from trainers.models import build_model
    from trainers.recipe import Recipe
    from trainers.reuse import Rebuild, Reuse, SeedAtTrainBegin

    jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    options = {k: v for k, v in (("width", args.width), ("units", args.units),
                                 ("hidden_layers", args.hidden_layers)) if v is not None}
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.images, *shape)).astype("float32")
    y = rng.integers(0, args.classes, size=args.images)
    n_val = max(args.batch_size, args.images // 4)
    x_val, y_val = x[:n_val], y[:n_val]
    recipes = [_recipe(Recipe, np.random.default_rng(100 + i), args.batch_size)
               for i in range(args.trials)]

    def factory(mode: str):
        if mode == "reuse":
            return Reuse(lambda: build_model(args.model, shape, args.classes, Recipe(),
                                             reusable=True, **options), jit_compile=jit)
        return Rebuild(lambda r: build_model(args.model, shape, args.classes, r, **options),
                       jit_compile=jit)

    # One-off start-up of the backend (device, allocator, first kernels), so that it is not
    # billed to whichever mode runs first.
    warm = time.perf_counter()
    keras.utils.set_random_seed(0)
    warm_model = build_model(args.model, shape, args.classes, Recipe(), **options)
    keras.ops.convert_to_numpy(warm_model(x[:2]))
    del warm_model
    warmup_s = time.perf_counter() - warm

    rows: dict[str, list[dict[str, float]]] = {}
    jit_flags: dict[str, bool] = {}
    for mode in args.modes:
        models = factory(mode)
        rows[mode] = []
        for trial, recipe in enumerate(recipes):
            seed = trial % args.folds
            clock = _FirstStep()
            start = clock.start = time.perf_counter()
            model = models.prepare(recipe, seed)
            prepared = time.perf_counter()
            model.fit(x, y, validation_data=(x_val, y_val), batch_size=args.batch_size, epochs=1,
                      callbacks=[SeedAtTrainBegin(seed), clock], verbose=0)
            done = time.perf_counter()
            rows[mode].append({
                "trial": trial, "seed": seed,
                "prepare_s": round(prepared - start, 4),
                "first_step_s": round(clock.first_step - start, 4),
                "trial_s": round(done - start, 4),
            })
            jit_flags[mode] = bool(model.jit_compile)
            print(f"{mode:8s} trial {trial}: prepare {prepared - start:7.3f} s, first step "
                  f"{clock.first_step - start:7.3f} s, whole trial {done - start:7.3f} s",
                  flush=True)
            del model
        del models

    summary = {mode: _summary(r) for mode, r in rows.items()}
    backend = keras.config.backend()
    settings = {
        "model": args.model, "options": options, "shape": list(shape), "classes": args.classes,
        "images": args.images, "validation_images": n_val, "batch_size": args.batch_size,
        "trials": args.trials, "folds": args.folds, "jit_compile": args.jit,
        "model_jit_compile": jit_flags, "warmup_s": round(warmup_s, 3),
    }
    result = {"settings": settings, "summary": summary, "trials": rows, "machine": machine()}
    md = _markdown(args, backend, settings, summary) + "\n" + machine_table(result["machine"])
    print(md)
    print(f"written: {write_result(f'reuse-{backend}', result, md)}")


def _recipe(recipe_cls, rng, batch_size: int):
    """A recipe as a study would sample it: every strength switched on or off at random."""
    def maybe(value: float) -> float:
        return float(value) if rng.random() < 0.7 else 0.0

    return recipe_cls(
        l1=maybe(10 ** rng.uniform(-6, -3)), l2=maybe(10 ** rng.uniform(-6, -3)),
        dropout=maybe(rng.uniform(0.1, 0.5)), augment=maybe(rng.uniform(0.1, 1.0)),
        learning_rate=float(10 ** rng.uniform(-4, -2.5)), batch_size=batch_size, max_epochs=1,
    )


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    later = rows[1:]
    return {
        "first_trial_first_step_s": rows[0]["first_step_s"],
        "first_trial_s": rows[0]["trial_s"],
        "later_first_step_median_s": round(statistics.median(r["first_step_s"] for r in later), 4),
        "later_prepare_median_s": round(statistics.median(r["prepare_s"] for r in later), 4),
        "later_trial_median_s": round(statistics.median(r["trial_s"] for r in later), 4),
    }


def _markdown(args, backend: str, settings: dict, summary: dict) -> str:
    command = (f"`{'KERAS_BACKEND=' + backend + ' ' if backend != 'tensorflow' else ''}"
               f"python -m benchmarks.reuse --model {args.model}"
               + "".join(f" --{k.replace('_', '-')} {v}" for k, v in settings["options"].items())
               + f" --shape {' '.join(map(str, args.shape))} --classes {args.classes}"
               f" --images {args.images} --batch-size {args.batch_size} --trials {args.trials}"
               f" --folds {args.folds} --jit {args.jit}`")
    lines = [
        f"# Trial start to first training step: rebuild vs reuse ({backend})",
        "",
        command,
        "",
        f"One epoch of {args.images} random {'x'.join(map(str, args.shape))} images per trial "
        f"(plus {settings['validation_images']} validation images), a new recipe each trial; "
        f"`model.jit_compile`: {settings['model_jit_compile']}. Later trials: median of "
        f"trials 2-{args.trials}. Backend start-up ({settings['warmup_s']:.1f} s) is paid "
        "before either mode is timed.",
        "",
        "| mode | first trial: to first step | later trials: to first step | later: prepare "
        "| later: whole trial |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, s in summary.items():
        lines.append(
            f"| {mode} | {s['first_trial_first_step_s']:.3f} s | "
            f"{s['later_first_step_median_s']:.3f} s | {s['later_prepare_median_s']:.3f} s | "
            f"{s['later_trial_median_s']:.3f} s |"
        )
    if {"rebuild", "reuse"} <= summary.keys():
        ratio = (summary["rebuild"]["later_first_step_median_s"]
                 / max(summary["reuse"]["later_first_step_median_s"], 1e-9))
        lines += ["", f"Later trials reach their first step **{ratio:.1f}x** sooner with reuse."]
    return "\n".join(lines) + "\n"


class _FirstStep(keras.callbacks.Callback):
    """Record when the first training step of a ``fit`` has finished."""

    start = 0.0
    first_step = float("nan")

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            float(logs["loss"])  # wait for the step itself, not just its dispatch
            self.first_step = time.perf_counter()


if __name__ == "__main__":
    main()
