"""Is the win real, over seeds; and what --stop-within-noise saves (issue: "Is the win real?").

    python -m benchmarks.significance --seeds 0 1 2 3 4 [--trials 40 --epochs 10 --folds 3]

Per seed, one `digits` study with a 20% held-out split, the reference baselines and the held-out
report (`--report-top 3`), run in this process through `search.driver.run_study` with the full
budget. From it:

- **The report's figures**: the selected recipe's held-out loss against the best baseline's, the
  paired bootstrap interval of their difference, the paired-fold verdict, Spearman's rank
  agreement of CV and held-out loss, and the warnings raised.
- **The stopping rule, replayed.** The rule (`search.convergence`) only decides where a search
  stops, not what it samples, so the run it would have stopped is the full run's first n
  finished trials: the first n at which it fires is where `--stop-within-noise` ends. The recipe
  selected then is retrained on the whole training split and scored on the held-out split as
  the report does (reused when the report already did). Reported: trials and fit seconds spent
  to that point against the full budget, and the held-out loss reached.

Writes benchmarks/results/significance-<study>.{json,md} (or under $BENCH_OUT), after each seed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from search.config import build_config
    from search.convergence import convergence
    from search.datasets import load_data
    from search.driver import run_study
    from search.names import (
        BEST_EPOCHS_ATTR,
        DATA_ATTR,
        FIT_SECONDS,
        HELDOUT_ATTR,
        PARENT_RUN_ATTR,
        RECIPE_ATTR,
    )
    from search.report import final_epochs
    from search.selection import ranked_trials
    from search.training import prepare_training
    from trainers import Recipe
    from trainers.fit import train_final

    config = build_config(
        args.study, n_trials=args.trials, n_folds=args.folds, max_epochs=args.epochs, seed=seed,
        storage=f"sqlite:///{root}/optuna.db", tracking_uri=f"sqlite:///{root}/mlflow.db",
        overrides=[f"data.heldout_fraction={args.heldout}", *args.set], baselines="reference",
        report_top=3)
    started = time.perf_counter()
    outcome = run_study(config, progress=False)
    wall = time.perf_counter() - started
    study = outcome.study
    client = MlflowClient(config.tracking_uri)
    report = json.loads(Path(client.download_artifacts(
        study.user_attrs[PARENT_RUN_ATTR], "heldout_report.json", str(root))).read_text())

    finished = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished()),
                      key=lambda t: t.datetime_complete)
    stop_at, trajectory = None, []
    for n in range(1, len(finished) + 1):
        view = optuna.create_study(study_name=study.study_name)
        view.set_user_attr(DATA_ATTR, study.user_attrs.get(DATA_ATTR, {}))
        view.add_trials(finished[:n])
        state = convergence(view, config.spec.space, seed=seed)
        if state is None:
            continue
        trajectory.append({"finished": n, "selectable": state.n_trials,
                           "regret_bound": state.regret_bound, "cv_error": state.cv_error})
        if state.within_noise and stop_at is None:
            stop_at = (n, state, ranked_trials(view)[0])

    def fit_seconds(trials: list) -> float:
        return sum(t.user_attrs.get(FIT_SECONDS, 0.0) for t in trials)

    heldout = study.user_attrs.get(HELDOUT_ATTR, {})
    rows = report["rows"]
    selected = rows[0]
    baselines = [r for r in rows if r["label"].startswith("baseline")]
    best_base = min(baselines, key=lambda r: r["heldout_loss"])
    comparison = next(c for c in report["comparisons"]
                      if f"baseline {c['baseline']}" == best_base["label"])
    result: dict[str, Any] = {
        "seed": seed, "wall_seconds": wall,
        "trials": {s.name.lower(): sum(t.state == s for t in finished)
                   for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
        "selected": {"label": selected["label"], "cv_val_loss": selected["cv_val_loss"],
                     "heldout_loss": selected["heldout_loss"], "recipe": selected["recipe"]},
        "best_baseline": {"label": best_base["label"], "cv_val_loss": best_base["cv_val_loss"],
                          "heldout_loss": best_base["heldout_loss"]},
        "vs_best_baseline": {k: comparison.get(k) for k in ("folds", "heldout_loss", "words")},
        "spearman": report["agreement"], "warnings": report["warnings"],
        "full": {"trials": len(finished), "fit_seconds": fit_seconds(finished),
                 "selected_trial": int(selected["label"].split("trial ")[1].rstrip(")")),
                 "heldout_loss": selected["heldout_loss"]},
        "stop": None,
        # the rule's two terms after each finished trial, from MIN_TRIALS selectable ones on
        "trajectory": trajectory,
    }
    if stop_at is not None:
        n, state, chosen = stop_at
        cached = next((v for k, v in heldout.items() if k.endswith(f"trial {chosen.number})")
                       or k == f"trial {chosen.number}"), None)
        if cached is not None:
            loss = cached["heldout_loss"]
        else:  # retrain it as the report would
            data = load_data(config.spec.data, where=config.name, seed=seed)
            training = prepare_training(config, data)
            loss = train_final(data.train, data.heldout,
                               Recipe.from_dict(chosen.user_attrs[RECIPE_ATTR]), training.models,
                               epochs=final_epochs(chosen.user_attrs[BEST_EPOCHS_ATTR]), seed=seed,
                               class_weight=training.class_weight).heldout_loss
        result["stop"] = {"trials": n, "fit_seconds": fit_seconds(finished[:n]),
                          "selected_trial": chosen.number, "heldout_loss": loss,
                          "regret_bound": state.regret_bound, "cv_error": state.cv_error}
    return result


def markdown(args: argparse.Namespace, runs: list[dict[str, Any]], machine: dict) -> str:
    from benchmarks._common import machine_table

    lines = [f"# Is the win real, and what stopping within noise saves: `{args.study}`, "
             f"{len(runs)} seed(s)", "",
             f"`python -m benchmarks.significance --seeds {' '.join(str(r['seed']) for r in runs)} "
             f"--trials {args.trials} --epochs {args.epochs} --folds {args.folds}`: each seed a "
             f"full study ({args.trials} trials, {args.folds} folds, {args.epochs} epochs at "
             f"most, {args.heldout:.0%} held out, reference baselines, report of the 3 best "
             f"trials).", "",
             "## The held-out report per seed", "",
             "| seed | selected | its CV / held-out | best baseline | its CV / held-out | "
             "held-out difference (95% CI) | folds verdict | Spearman | warnings |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        d = r["vs_best_baseline"].get("heldout_loss") or {}
        folds = (r["vs_best_baseline"].get("folds") or {}).get("outcome", "n/a")
        lines.append(
            f"| {r['seed']} | {r['selected']['label']} | {r['selected']['cv_val_loss']:.4f} / "
            f"{r['selected']['heldout_loss']:.4f} | {r['best_baseline']['label']} | "
            f"{r['best_baseline']['cv_val_loss']:.4f} / {r['best_baseline']['heldout_loss']:.4f}"
            f" | {d.get('mean', float('nan')):+.4f} ({d.get('low', float('nan')):+.4f} .. "
            f"{d.get('high', float('nan')):+.4f}) | {folds} | "
            f"{(r['spearman'] or {}).get('rho', float('nan')):.2f} | {len(r['warnings'])} |")
    lines += ["", "Difference: selected minus best baseline (negative: the selected recipe is "
              "lower); paired bootstrap over held-out images.", "",
              "## --stop-within-noise, replayed on the same runs", "",
              "| seed | full: trials / fit s / held-out | stop: trials / fit s / held-out | "
              "saved | regret bound < CV error |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        full, stop = r["full"], r["stop"]
        if stop is None:
            last = r["trajectory"][-1] if r.get("trajectory") else None
            terms = (f"{last['regret_bound']:.4f} vs {last['cv_error']:.4f} at the end "
                     f"({last['selectable']} scored)" if last else
                     "fewer selectable trials than the rule needs")
            lines.append(f"| {r['seed']} | {full['trials']} / {full['fit_seconds']:.0f} / "
                         f"{full['heldout_loss']:.4f} | never fired | 0 | {terms} |")
            continue
        lines.append(
            f"| {r['seed']} | {full['trials']} / {full['fit_seconds']:.0f} / "
            f"{full['heldout_loss']:.4f} | {stop['trials']} / {stop['fit_seconds']:.0f} / "
            f"{stop['heldout_loss']:.4f} | {1 - stop['fit_seconds'] / full['fit_seconds']:.0%}"
            f" of fit s | {stop['regret_bound']:.4f} < {stop['cv_error']:.4f} |")
    lines += ["", machine_table(machine)]
    return "\n".join(lines) + "\n"


def main() -> None:
    from benchmarks._common import machine, study_arguments, write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(p, trials=40, epochs=10, folds=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--heldout", type=float, default=0.2)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--name", help="result file name (default: significance-<study>)")
    p.add_argument("--stores", help="keep each seed's stores under DIR/seed-<seed> (default: "
                                    "a temporary folder); a rerun resumes them")
    p.add_argument("--keep-others", action="store_true",
                   help="keep the result file's runs of seeds not given in --seeds")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from search.study import quiet_optuna

    quiet_optuna()
    info = machine()
    name = args.name or f"significance-{args.study}"
    kept = []
    if args.keep_others:
        from benchmarks._common import RESULTS

        previous = Path(os.environ.get("BENCH_OUT", RESULTS)) / f"{name}.json"
        if previous.exists():
            kept = [r for r in json.loads(previous.read_text())["runs"]
                    if r["seed"] not in args.seeds]
    runs = []
    for seed in args.seeds:
        if args.stores:  # kept: the same command again replays the rule on them at once
            root = Path(args.stores) / f"seed-{seed}"
            root.mkdir(parents=True, exist_ok=True)
            runs.append(run_seed(args, seed, root.resolve()))
        else:
            with tempfile.TemporaryDirectory() as root:
                runs.append(run_seed(args, seed, Path(root)))
        every = sorted(kept + runs, key=lambda r: r["seed"])
        result = {"study": args.study, "trials": args.trials, "epochs": args.epochs,
                  "folds": args.folds, "heldout_fraction": args.heldout, "runs": every,
                  "machine": info}
        md = markdown(args, every, info)
        print(md)
        print(f"written: {write_result(name, result, md)}")


if __name__ == "__main__":
    main()
