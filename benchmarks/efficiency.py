"""Search efficiency: regsearch (TPE + pruning) vs random search vs KerasTuner Hyperband.

    python -m benchmarks.efficiency --study digits --trials 30 --epochs 10 --folds 3 --seeds 0 1 2

Same study (data, model, space, fixed training settings, epoch limit) searched three ways:

(a) regsearch as shipped: TPE sampler and the study's default pruner, through `build_config` /
    `run_study` into a temporary store;
(b) random sampling without pruning (``sampler="random"``, ``pruner="none"``), same trial budget;
(c) KerasTuner's Hyperband on the same space (`spaces.to_keras_tuner`), objective
    ``val_cross_entropy`` (min), ``max_epochs`` = the study's epoch limit, factor 3, early
    stopping at each recipe's patience. KerasTuner has no k-fold: it searches on ONE
    validation split, fold 0 of the study's stratified folds; its best recipe is then re-scored
    with regsearch's k-fold `cross_validate` so its loss compares with (a) and (b).

Measured for each: best CV loss, epochs trained (every fold's epochs; for (c) every epoch its
`fit` calls ran) and "GPU-seconds" = seconds inside Keras ``fit`` (for (a)/(b) the trials'
``fit_seconds``; for (c) timed around each ``fit`` of its search). Also: the seconds (a) needs to
first reach (b)'s best CV loss, walking (a)'s trials in completion order and summing their
``fit_seconds`` until a COMPLETE trial's value is <= (b)'s best.

Targets (printed MET / NOT MET):
  1. (a) reaches (b)'s best CV loss within a fifth of (b)'s total fit seconds;
  2. (a)'s best CV loss is lower than (c)'s best recipe re-scored by k-fold CV.

Results go to benchmarks/results/efficiency-<study>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# as search.run does: TF 2.21's oneDNN CPU kernels crash on some models
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


ARMS = ("a", "b", "c")


def _regsearch(args: argparse.Namespace, label: str, seed: int, extra: tuple[str, ...] = (),
               **choice: Any) -> dict[str, Any]:
    """Run one regsearch study into a temporary store; return its figures and trials."""
    from optuna.trial import TrialState

    from search.config import build_config
    from search.driver import run_study
    from search.names import ENQUEUED_ATTR, EPOCHS_TRAINED, FIT_SECONDS, RECIPE_ATTR
    from search.study import TPE_DEFAULTS

    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(
            args.study, n_trials=args.trials, max_epochs=args.epochs, n_folds=args.folds,
            seed=seed, storage=f"sqlite:///{tmp}/optuna.db",
            tracking_uri=f"sqlite:///{tmp}/mlflow.db", overrides=[*args.set, *extra], **choice,
        )
        if args.no_defaults:
            config = config.replace(enqueue_defaults=False)
        start = time.perf_counter()
        outcome = run_study(config, progress=False, data_dir=args.data_dir)
        wall = time.perf_counter() - start
    trials = [t for t in outcome.study.trials if t.state.is_finished()]
    trials.sort(key=lambda t: t.datetime_complete)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    best = min(done, key=lambda t: t.value) if done else None
    return {
        "label": label, "seed": seed, "sampler": config.sampler, "pruner": config.pruner,
        "tpe_options": {**TPE_DEFAULTS, **config.tpe_options}, "overrides": list(extra),
        "trials": len(trials),
        "complete": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "best_cv_val_loss": best.value if best else math.nan,
        "best_recipe": best.user_attrs.get(RECIPE_ATTR) if best else None,
        "best_trial": best.number if best else None,
        "best_is_enqueued_defaults": bool(best and best.user_attrs.get(ENQUEUED_ATTR) == "defaults"),
        "epochs_trained": int(sum(t.user_attrs.get(EPOCHS_TRAINED, 0) for t in trials)),
        "fit_seconds": float(sum(t.user_attrs.get(FIT_SECONDS, 0.0) for t in trials)),
        "wall_seconds": wall,
        # completion order: (state, value or None, fit seconds), for the time-to-target walk
        "timeline": [(t.state.name, t.value, float(t.user_attrs.get(FIT_SECONDS, 0.0)))
                     for t in trials],
    }


def _reach_index(timeline: list, target: float) -> int | None:
    """Position, in completion order, of the first COMPLETE trial at or below ``target``."""
    for i, (state, value, _) in enumerate(timeline):
        if state == "COMPLETE" and value is not None and value <= target:
            return i
    return None


def _seconds_to_reach(timeline: list, target: float) -> float | None:
    """Fit seconds summed over trials in completion order until one reaches ``target``."""
    index = _reach_index(timeline, target)
    return None if index is None else sum(seconds for _, _, seconds in timeline[:index + 1])


def _keras_tuner(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """KerasTuner Hyperband on fold 0 of the study's folds; best recipe re-scored by k-fold CV."""
    import keras
    import keras_tuner

    from search.config import build_config
    from search.datasets import load_data
    from search.recording import make_recipe
    from search.training import prepare_training
    from spaces import to_keras_tuner, values_from_keras_tuner
    from trainers.fit import CROSS_ENTROPY, compile_model, cross_validate, resolve_class_weight
    from trainers.regularization import early_stopping

    config = build_config(args.study, max_epochs=args.epochs, n_folds=args.folds, seed=seed,
                          overrides=args.set)
    data = load_data(config.spec.data, where=str(config.spec.path), seed=config.seed,
                     data_dir=args.data_dir, progress=False)
    training = prepare_training(config, data)  # the study's own builder, folds, class weight
    build, folds, weights = training.build, training.folds, training.class_weight
    space = config.spec.space
    train, val = data.train.subset(folds[0].train), data.train.subset(folds[0].val)
    train_weights = resolve_class_weight(weights, train)  # from fold 0's training part, as (a)
    spent = {"fit_seconds": 0.0, "epochs": 0, "fits": 0}

    class CountEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            spent["epochs"] += 1

    class RecipeModel(keras_tuner.HyperModel):
        """The study's model for the recipe the hyperparameters hold."""

        def build(self, hp):  # noqa: ANN001, ANN201
            recipe = make_recipe(config, values_from_keras_tuner(space, hp))
            keras.utils.set_random_seed(config.seed)  # fold 0's initial weights, as regsearch
            return compile_model(build(recipe), recipe)

        def fit(self, hp, model, *fit_args, **kwargs):  # noqa: ANN001, ANN201
            recipe = make_recipe(config, values_from_keras_tuner(space, hp))
            callbacks = list(kwargs.pop("callbacks", []))
            callbacks += [CountEpochs(), early_stopping(recipe)]
            kwargs.setdefault("batch_size", recipe.batch_size)
            start = time.perf_counter()
            try:
                return model.fit(*fit_args, callbacks=callbacks, class_weight=train_weights,
                                 **kwargs)
            finally:
                spent["fit_seconds"] += time.perf_counter() - start
                spent["fits"] += 1

    with tempfile.TemporaryDirectory() as tmp:
        tuner = keras_tuner.Hyperband(
            RecipeModel(), objective=keras_tuner.Objective(f"val_{CROSS_ENTROPY}", "min"),
            max_epochs=config.max_epochs, factor=3, hyperband_iterations=1, seed=config.seed,
            hyperparameters=to_keras_tuner(space), tune_new_entries=False,
            directory=tmp, project_name="kt", overwrite=True,
        )
        start = time.perf_counter()
        tuner.search(train.x, train.y, validation_data=(val.x, val.y), verbose=0)
        search_wall = time.perf_counter() - start
        trials = list(tuner.oracle.trials.values())
        best = tuner.oracle.get_best_trials(1)[0]
        values = values_from_keras_tuner(space, best.hyperparameters)
    recipe = make_recipe(config, values)
    start = time.perf_counter()
    # a recipe stuck at chance is a bad score here, not a failure: it is (c)'s answer
    cv = cross_validate(data.train, folds, recipe, build, seed=config.seed, class_weight=weights,
                        fail_at_chance=False)
    rescore = time.perf_counter() - start
    return {
        "label": "(c) KerasTuner Hyperband (fold 0 only)", "seed": seed,
        "trials": len(trials),
        "complete": sum(t.status == "COMPLETED" for t in trials),
        "failed": sum(t.status in ("FAILED", "INVALID") for t in trials),
        "fits": spent["fits"],
        "best_fold0_val_loss": float(best.score),
        "best_recipe": recipe.to_dict(),
        "best_cv_val_loss": cv.val_loss,
        "rescore_fit_seconds": cv.fit_seconds,
        "rescore_wall_seconds": rescore,
        "epochs_trained": spent["epochs"],
        "fit_seconds": spent["fit_seconds"],
        "wall_seconds": search_wall,
    }


def _parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    label, sep, overrides = text.partition(":")
    if not sep or not label:
        raise SystemExit(f"--variant {text!r}: expected LABEL:SECTION.KEY=VALUE[;...]")
    return label, tuple(o.strip() for o in overrides.split(";") if o.strip())


def main() -> None:
    from benchmarks._common import study_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(p, trials=12, epochs=10, folds=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="study seeds (folds, samplers, initial weights); every search runs "
                        "once per seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an entry of the study file for every search (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:OVERRIDES",
                   help="also run (a) with these ';'-separated overrides, e.g. "
                        "'mv:search.tpe={multivariate: true, group: true}' (repeatable)")
    p.add_argument("--no-defaults", action="store_true",
                   help="do not enqueue the study file's default recipe as trial 0 of (a) and "
                        "(b): every trial is the sampler's own")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="run only these searches (a: regsearch, b: random, c: KerasTuner); "
                        "the results of separate runs are compared with --merge (on a GPU, one "
                        "arm of the real study fills a 10-minute command)")
    p.add_argument("--name", help="result file name (default: efficiency-<study>)")
    p.add_argument("--render", metavar="RESULT.json",
                   help="only rewrite the Markdown of a saved result")
    p.add_argument("--merge", nargs="+", metavar="RESULT.json",
                   help="combine the runs of saved results of the same study and settings "
                        "(other seeds, other variants) into --name")
    args = p.parse_args()
    if args.render:
        rerender(args.render)
        return
    if args.merge:
        merge(args.merge, args.name or f"efficiency-{args.study}")
        return
    variants = [("a", ())] + [_parse_variant(v) for v in args.variant]

    from benchmarks._common import machine

    started = time.perf_counter()
    arms: dict[str, dict[str, Any]] = {}  # per seed: "b", "c", and "a" by variant label
    for seed in args.seeds:
        arm = arms.setdefault(str(seed), {})
        if "b" in args.arms:
            arm["b"] = _regsearch(args, "(b) random, no pruning", seed, sampler="random",
                                  pruner="none")
            print({k: v for k, v in arm["b"].items() if k != "timeline"}, flush=True)
        if "c" in args.arms:
            arm["c"] = _keras_tuner(args, seed)
            print(arm["c"], flush=True)
        if "a" in args.arms:
            arm["a"] = {}
            for label, extra in variants:
                name = ("(a) regsearch: TPE + default pruner"
                        + ("" if label == "a" else f" [{label}]"))
                arm["a"][label] = _regsearch(args, name, seed, extra, sampler="tpe")
                print({k: v for k, v in arm["a"][label].items() if k != "timeline"}, flush=True)
    total = time.perf_counter() - started
    sets = "".join(f" --set {s}" for s in args.set)
    variant_args = "".join(f" --variant '{v}'" for v in args.variant)
    cmd = (f"python -m benchmarks.efficiency --study {args.study} --trials {args.trials} "
           f"--epochs {args.epochs} --folds {args.folds} --seeds "
           f"{' '.join(map(str, args.seeds))}{sets}{variant_args}"
           + (" --no-defaults" if args.no_defaults else "")
           + (f" --arms {' '.join(args.arms)}" if set(args.arms) != set(ARMS) else ""))
    result = {
        "command": cmd, "study": args.study, "trials": args.trials, "folds": args.folds,
        "max_epochs": args.epochs, "seeds": args.seeds, "overrides": args.set,
        "variants": {label: list(extra) for label, extra in variants},
        "enqueue_defaults": not args.no_defaults, "arms": arms, "runs": compare(arms),
        "total_wall_seconds": total, "machine": machine(),
    }
    name = args.name or (f"efficiency-{args.study}" + ("-nodefaults" if args.no_defaults else "")
                         + ("" if set(args.arms) == set(ARMS) else "-" + "".join(args.arms)))
    _write(name, result)


def compare(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per seed and (a) variant whose three arms are all there: the targets' figures."""
    runs = []
    for seed, arm in sorted(arms.items(), key=lambda kv: int(kv[0])):
        if not {"a", "b", "c"} <= set(arm):
            continue
        b, c = arm["b"], arm["c"]
        b_own = _seconds_to_reach(b["timeline"], b["best_cv_val_loss"])
        for label, a in arm["a"].items():
            reach, fraction = _reach(a, b)
            runs.append({
                "seed": int(seed), "variant": label, "regsearch": a, "random": b, "keras_tuner": c,
                "a_seconds_to_reach_b_best": reach, "b_seconds_to_reach_b_best": b_own,
                "reach_fraction_of_b": fraction,
                "target_a_reaches_b_within_fifth": reach is not None
                and reach <= b["fit_seconds"] / 5,
                "target_a_below_c": a["best_cv_val_loss"] < c["best_cv_val_loss"],
            })
    return runs


def _reach(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    """Target 1's figures: (a)'s fit seconds to reach (b)'s best CV loss, and that as a
    fraction of all (b)'s fit seconds (None, None: never reached)."""
    reach = _seconds_to_reach(a["timeline"], b["best_cv_val_loss"])
    return reach, None if reach is None else reach / b["fit_seconds"]


def _partial(result: dict[str, Any]) -> str:
    """The Markdown of a result that lacks an arm: what each arm ran, no verdict yet."""
    lines = [f"# Search efficiency (partial): `{result['study']}`", "", f"`{result['command']}`",
             "", "Arms still missing for a comparison; merge this file with the others "
             "(`--merge`). Where (a) and (b) both ran, the last column is target 1's figure: "
             "(a)'s fit seconds to reach (b)'s best CV loss, as a fraction of (b)'s seconds "
             "(target <= 0.20).", "",
             "| seed | arm | best CV loss | fit seconds | epochs | to (b)'s best / (b) s |",
             "| --- | --- | --- | --- | --- | --- |"]
    fractions = []
    for seed, arm in sorted(result["arms"].items(), key=lambda kv: int(kv[0])):
        found = [(k, arm[k], "") for k in ("b", "c") if k in arm]
        for label, a in arm.get("a", {}).items():
            shown = ""
            if "b" in arm:
                fraction = _reach(a, arm["b"])[1]
                fractions.append(math.inf if fraction is None else fraction)
                shown = "not reached" if fraction is None else f"{fraction:.2f}"
            found.append((f"a [{label}]", a, shown))
        lines += [f"| {seed} | {name} | {r['best_cv_val_loss']:.4f} | {r['fit_seconds']:.1f} | "
                  f"{r['epochs_trained']} | {shown} |" for name, r, shown in found]
    if fractions:
        lines += ["", f"Median fraction over {len(fractions)} run(s): "
                      f"{statistics.median(fractions):.2f}."]
    return "\n".join(lines) + "\n"


def _startup_trials(a: dict[str, Any]) -> int:
    return int(a["tpe_options"].get("n_startup_trials", 10))


def _chose_itself(a: dict[str, Any], index: int) -> bool:
    """Whether (a)'s trial at timeline ``index`` was TPE's own pick, not a random startup one."""
    before = sum(st in ("COMPLETE", "PRUNED") for st, _, _ in a["timeline"][:index])
    return before >= _startup_trials(a)


def render(result: dict[str, Any]) -> str:
    """The Markdown report of a result (also from a saved JSON: ``--render``)."""
    from benchmarks._common import machine_table

    runs, seeds = result["runs"], result["seeds"]
    yes = {True: "MET", False: "not met"}

    def fmt(x: float | None) -> str:
        return "never" if x is None else f"{x:.1f}"

    rows = []
    for r in runs:
        a, b, c = r["regsearch"], r["random"], r["keras_tuner"]
        fraction = r["reach_fraction_of_b"]
        index = _reach_index(a["timeline"], b["best_cv_val_loss"])
        r["reached_by_tpe_choice"] = index is not None and _chose_itself(a, index)
        if index is None:
            how = "-"
        elif r["reached_by_tpe_choice"]:
            how = f"trial {index + 1}, TPE's"
        else:
            how = f"trial {index + 1}, random (also (b)'s)"
        own = sum(_chose_itself(a, i) for i in range(len(a["timeline"])))
        rows.append(
            f"| {r['seed']} | {r['variant']} | {a['best_cv_val_loss']:.4f} | "
            f"{b['best_cv_val_loss']:.4f} | {c['best_cv_val_loss']:.4f} | "
            f"{a['fit_seconds']:.1f} | {b['fit_seconds']:.1f} | {c['fit_seconds']:.1f} | "
            f"{fmt(r['a_seconds_to_reach_b_best'])} | {fmt(r['b_seconds_to_reach_b_best'])} | "
            f"{'-' if fraction is None else format(fraction, '.2f')} | {how} | "
            f"{a['complete']}/{a['pruned']}/{a['failed']} | {own} of {a['trials']} | "
            f"{yes[r['target_a_reaches_b_within_fifth']]} | {yes[r['target_a_below_c']]} |")
    summary = []
    for label, extra in result["variants"].items():
        mine = [r for r in runs if r["variant"] == label]
        fractions = sorted(r["reach_fraction_of_b"] if r["reach_fraction_of_b"] is not None
                           else math.inf for r in mine)
        middle = len(fractions) // 2
        median = (fractions[middle] if len(fractions) % 2
                  else (fractions[middle - 1] + fractions[middle]) / 2)
        fifths = sum(r["target_a_reaches_b_within_fifth"] for r in mine)
        by_tpe = sum(r["target_a_reaches_b_within_fifth"] and r["reached_by_tpe_choice"]
                     for r in mine)
        lower_than_b = sum(r["regsearch"]["best_cv_val_loss"] < r["random"]["best_cv_val_loss"]
                           for r in mine)
        wins = sum(r["target_a_below_c"] for r in mine)
        summary.append(
            f"| {label} | {'; '.join(extra) or 'none'} | {median:.2f} | "
            f"{fifths} of {len(mine)} ({by_tpe} by a trial TPE chose) | "
            f"{lower_than_b} of {len(mine)} | {wins} of {len(mine)} |")
    c0 = runs[0]["keras_tuner"]
    gpu = result["machine"].get("gpu", "the CPU")
    return (
        f"# Search efficiency on `{result['study']}`: {result['trials']} trials, "
        f"{result['folds']} folds, {result['max_epochs']} epochs at most, seeds "
        f"{', '.join(map(str, seeds))}\n\n`{result['command']}`\n\n"
        f"(a) regsearch: TPE (regsearch's TPE options, plus each variant's overrides) and the "
        f"study's pruner; (b) random sampling, no pruning; "
        f"(c) KerasTuner Hyperband (max_epochs={result['max_epochs']}, factor 3, one iteration) "
        f"on ONE split, fold 0 of the study's folds (KerasTuner has no k-fold), its best recipe "
        f"re-scored by regsearch's {result['folds']}-fold `cross_validate` (the CV figure below; "
        f"the re-scoring is not counted in its seconds). \"GPU\" seconds are seconds inside "
        f"Keras `fit`, compilation included; here spent on {gpu}. \"To (b)'s best\": fit "
        f"seconds summed over a search's trials in completion order until a complete trial is at "
        f"or below (b)'s best CV loss.\n\n"
        f"TPE draws its first n_startup_trials (10 unless a variant says otherwise) at random "
        f"from a sampler seeded like (b)'s: those trials are (b)'s first trials, so where (b)'s "
        f"best is among them (a) \"reaches\" it by the same random draw, cheaper only by its "
        f"pruning. The summary counts which target-1 successes came from a trial TPE chose.\n\n"
        f"## Summary\n\n"
        f"| (a) variant | overrides | median (a) seconds to (b)'s best / (b) seconds "
        f"(target <= 0.20) | target 1 met | (a) best < (b) best | (a) best < (c) best "
        f"(target 2) |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(summary) + "\n\n"
        "## Every run\n\n"
        "| seed | (a) variant | (a) best CV | (b) best CV | (c) best CV | (a) s | (b) s | (c) s | "
        "(a) s to (b)'s best | (b) s to its best | fraction of (b) s | reached at | (a) "
        "complete/pruned/failed | (a) trials TPE chose | target 1 | target 2 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
        "--- | --- |\n" + "\n".join(rows) + "\n\n"
        f"- (c) ran {c0['trials']} KerasTuner trials ({c0['fits']} `fit` calls, "
        f"{c0['epochs_trained']} epochs) for seed {c0['seed']}.\n"
        + ("" if not result["enqueue_defaults"] else
           "- The study file's default recipe is enqueued as trial 0 of (a) and (b): where it is "
           "the best of both, target 1 is met by that trial alone (rerun with --no-defaults).\n")
        + f"\nWhole benchmark: {result['total_wall_seconds']:.0f} s wall.\n\n"
        + machine_table(result["machine"])
    )


def _per_seed(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each seed's arms, ``{"b": ..., "c": ..., "a": {variant: ...}}`` (None where an arm is
    missing), from the result's arms or, for results written before arms were kept, its runs."""
    seeds: dict[int, dict[str, Any]] = {}
    for seed, arm in result.get("arms", {}).items():
        seeds[int(seed)] = {"b": arm.get("b"), "c": arm.get("c"), "a": dict(arm.get("a", {}))}
    for run in result["runs"]:
        entry = seeds.setdefault(run["seed"], {"b": None, "c": None, "a": {}})
        entry["b"] = entry["b"] or run["random"]
        entry["c"] = entry["c"] or run["keras_tuner"]
        entry["a"].setdefault(run["variant"], run["regsearch"])
    return dict(sorted(seeds.items()))


def _best_so_far(timeline: list) -> tuple[list[float], list[float]]:
    """Cumulative fit seconds and the best complete CV loss so far, trial by trial."""
    xs, ys, spent, best = [0.0], [math.nan], 0.0, math.inf
    for state, value, seconds in timeline:
        spent += seconds
        if state == "COMPLETE" and value is not None and value < best:
            best = value
        xs.append(spent)
        ys.append(best if math.isfinite(best) else math.nan)
    return xs, ys


def plot(result: dict[str, Any], path: Any) -> None:
    """One panel per seed: best CV loss so far against fit seconds, for (a) and (b), with
    (c)'s re-scored best as a point at its seconds and target 1's line at (b)'s seconds / 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    seeds = _per_seed(result)
    variants = list(dict.fromkeys(label for arm in seeds.values() for label in arm["a"]))
    colors = {label: f"C{i}" for i, label in enumerate(variants)}  # the same in every panel
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    sparse = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "235" else "")
    cols = min(len(seeds), 3)
    rows = math.ceil(len(seeds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 0.6), squeeze=False)
    for ax, (seed, arm) in zip(axes.flat, seeds.items()):
        for label, a in arm["a"].items():
            ax.step(*_best_so_far(a["timeline"]), where="post", lw=1.8, color=colors[label],
                    label="(a) regsearch" + ("" if label == "a" else f" [{label}]"))
        b = arm["b"]
        if b is not None:
            ax.step(*_best_so_far(b["timeline"]), where="post", lw=1.8, color="0.35",
                    label="(b) random, no pruning")
            ax.axhline(b["best_cv_val_loss"], color="0.35", ls=":", lw=1)
            ax.axvline(b["fit_seconds"] / 5, color="tab:red", ls="--", lw=1,
                       label="(b)'s seconds / 5 (target 1)")
        c = arm["c"]
        if c is not None:
            ax.plot([c["fit_seconds"]], [c["best_cv_val_loss"]], marker="*", ms=13, ls="none",
                    color="tab:purple", label="(c) KerasTuner Hyperband, re-scored")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        # within a few tenths every minor tick gets its number; over wider ranges only 2, 3, 5
        ax.yaxis.set_minor_formatter(plain if high / low < 3 else sparse)
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("fit seconds (GPU-seconds on a GPU)")
        ax.set_ylabel("best CV loss so far")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(seeds):]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}  # every label once, from whichever panel has it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 3),
               frameon=False)
    fig.suptitle(f"Search efficiency on `{result['study']}`: {result['trials']} trials, "
                 f"{result['folds']} folds, {result['max_epochs']} epochs at most")
    legend_rows = math.ceil(len(legend) / 3)
    fig.tight_layout(rect=(0, (0.2 if rows == 1 else 0.1) * legend_rows / 2 + 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(name: str, result: dict[str, Any], folder: Any = None) -> None:
    """Print and write the result's JSON (unless ``folder``: beside an existing one), Markdown
    and plot."""
    from pathlib import Path

    from benchmarks._common import write_result

    md = ((render(result) if result["runs"] else _partial(result))
          + f"\n![best CV loss so far against fit seconds, by seed]({name}.png)\n")
    print(md)
    if folder is None:
        path = write_result(name, result, md)
    else:
        path = Path(folder) / f"{name}.md"
        path.write_text(md)
    plot(result, path.with_suffix(".png"))
    print(f"written: {path} and {path.with_suffix('.png').name}")


def merge(paths: list[str], name: str) -> None:
    """Write one result holding the runs of several (same study, trials, folds, epochs)."""
    import json
    from pathlib import Path

    parts = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("study", "trials", "folds", "max_epochs", "overrides", "enqueue_defaults")
    for part in parts[1:]:
        differ = [k for k in keys if part[k] != parts[0][k]]
        if differ:
            raise SystemExit(f"cannot merge: {', '.join(differ)} differ")
    arms: dict[str, dict[str, Any]] = {}
    for part in parts:
        for seed, arm in part.get("arms", {}).items():
            into = arms.setdefault(seed, {})
            for key, value in arm.items():
                if key == "a":
                    into.setdefault("a", {}).update(value)
                else:
                    into[key] = value
    # results written before arms were kept have only their runs
    legacy = [r for p in parts if "arms" not in p for r in p["runs"]]
    result = {**parts[0], "command": " ; ".join(p["command"] for p in parts),
              "seeds": sorted({s for p in parts for s in p["seeds"]}),
              "variants": {k: v for p in parts for k, v in p["variants"].items()},
              "arms": arms, "runs": legacy + compare(arms),
              "total_wall_seconds": sum(p["total_wall_seconds"] for p in parts)}
    _write(name, result)


def rerender(path: str) -> None:
    """Rewrite the Markdown of a saved result JSON (after a change to `render`)."""
    import json
    from pathlib import Path

    source = Path(path)
    _write(source.stem, json.loads(source.read_text()), folder=source.parent)


if __name__ == "__main__":
    main()
