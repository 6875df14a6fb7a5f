"""Searched recipe vs the hand-picked baselines on held-out data (issue: tinyimagenet study).

Two phases, so each fits in one sitting of a GPU machine; the stores under ``--root`` carry
the study from one to the next (a rerun of `search.run` resumes it):

    python -m benchmarks.heldout search --root R --workers 4 --trials 24 --folds 3 --timeout 420
    python -m benchmarks.heldout report --root R --folds 3

``search`` runs the five reference baselines in a first worker and the search in ``--workers``
processes sharing one GPU (same study, same stores); ``report`` retrains the selected recipe and
every baseline on the whole training split, scores the held-out split once, and writes
benchmarks/results/heldout-<study>.{json,md} (or under $BENCH_OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _run_args(args: argparse.Namespace) -> list[str]:
    out = [sys.executable, "-m", "search.run", "--study", args.study, "--folds", str(args.folds),
           "--epochs", str(args.epochs), "--trials", str(args.trials), "--no-progress",
           "--storage", f"sqlite:///{args.root}/optuna.db",
           "--tracking-uri", f"sqlite:///{args.root}/mlflow.db"]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    for override in args.set:
        out += ["--set", override]
    return out


def search(args: argparse.Namespace) -> None:
    import optuna

    from search.names import PARENT_RUN_ATTR

    Path(args.root).mkdir(parents=True, exist_ok=True)
    base = _run_args(args)
    logs = [open(Path(args.root) / f"worker{i}.log", "a") for i in range(args.workers)]
    start = time.perf_counter()
    first = subprocess.Popen(base + ["--baselines", "reference", "--no-report",
                                     "--timeout", str(args.timeout)],
                             stdout=logs[0], stderr=subprocess.STDOUT)
    # The first worker creates the study and the MLflow parent run; the others join it.
    storage = f"sqlite:///{args.root}/optuna.db"
    while True:
        time.sleep(2)
        try:
            study = optuna.load_study(study_name=args.study, storage=storage)
            if PARENT_RUN_ATTR in study.user_attrs:
                break
        except Exception:
            pass
        if first.poll() is not None:
            raise SystemExit(f"first worker exited early; see {args.root}/worker0.log")
    others = [subprocess.Popen(base + ["--no-report", "--timeout", str(args.timeout)],
                               stdout=logs[i], stderr=subprocess.STDOUT)
              for i in range(1, args.workers)]
    codes = [p.wait() for p in [first, *others]]
    wall = time.perf_counter() - start
    (Path(args.root) / "search_phase.json").write_text(json.dumps(
        {"wall_seconds": wall, "workers": args.workers, "exit_codes": codes}))
    print(f"search phase: {wall:.0f} s, exit codes {codes}")


def report(args: argparse.Namespace) -> None:
    import optuna
    from optuna.trial import TrialState

    from benchmarks._common import machine, machine_table, trial_overheads, write_result
    from search.names import BASELINES_ATTR, DATA_ATTR, EPOCHS_TRAINED, FIT_SECONDS, HELDOUT_ATTR

    start = time.perf_counter()
    if not args.summarize_only:
        # Resuming with the baselines set runs any baseline the search phase did not finish;
        # the budget is spent, so no new trial starts and the held-out report follows.
        proc = subprocess.run(_run_args(args) + ["--baselines", "reference"],
                              capture_output=True, text=True)
        print(proc.stdout[-4000:], proc.stderr[-4000:])
    report_wall = args.report_seconds or time.perf_counter() - start
    storage = f"sqlite:///{args.root}/optuna.db"
    study = optuna.load_study(study_name=args.study, storage=storage)
    phase_file = Path(args.root) / "search_phase.json"
    phase = (json.loads(phase_file.read_text()) if phase_file.exists()
             else {"wall_seconds": float("nan"), "workers": args.workers})
    trials = study.get_trials(deepcopy=False)
    baselines = study.user_attrs.get(BASELINES_ATTR, {})
    heldout = study.user_attrs.get(HELDOUT_ATTR, {})
    data = study.user_attrs.get(DATA_ATTR, {})
    fold_images = data.get("n_train", 0) * (args.folds - 1) / args.folds
    epochs = (sum(t.user_attrs.get(EPOCHS_TRAINED, 0) for t in trials)
              + sum(b.get(EPOCHS_TRAINED, 0) for b in baselines.values()))
    fit_seconds = (sum(t.user_attrs.get(FIT_SECONDS, 0) for t in trials)
                   + sum(b.get(FIT_SECONDS, 0) for b in baselines.values()))
    rows = []
    for label, entry in heldout.items():
        rows.append({"recipe": label, "epochs": entry["epochs"], "train_loss": entry["train_loss"],
                     "heldout_loss": entry["heldout_loss"],
                     "gap": entry["heldout_loss"] - entry["train_loss"],
                     "heldout_accuracy": entry["heldout_accuracy"]})
    rows.sort(key=lambda r: r["heldout_loss"])
    base_rows = [r for r in rows if r["recipe"].startswith("baseline")]
    selected = next((r for r in rows if r["recipe"].startswith("selected")), None)
    verdict = "n/a"
    if selected and base_rows:
        best_base = min(r["heldout_loss"] for r in base_rows)
        gain = 1 - selected["heldout_loss"] / best_base
        verdict = (f"selected {selected['heldout_loss']:.4f} vs best baseline {best_base:.4f}: "
                   f"{100 * gain:.1f}% lower (target: 10%) -> "
                   f"{'MET' if gain >= 0.10 else 'NOT MET'}")
    result = {
        "study": args.study, "folds": args.folds, "max_epochs": args.epochs,
        "trial_budget": args.trials,
        "trials": {s.name.lower(): sum(t.state == s for t in trials)
                   for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
        "best_cv_val_loss": study.best_value if any(t.state == TrialState.COMPLETE for t in trials) else None,
        "baselines_cv": {k: v.get("cv_val_loss") for k, v in baselines.items()},
        "heldout": rows, "verdict": verdict,
        "search_wall_seconds": phase["wall_seconds"], "workers": phase["workers"],
        "report_wall_seconds": report_wall,
        "images_trained": epochs * fold_images, "fit_seconds": fit_seconds,
        "images_per_second_aggregate": epochs * fold_images / phase["wall_seconds"],
        "images_per_second_inside_fit": epochs * fold_images / fit_seconds if fit_seconds else None,
        **trial_overheads(trials),
        "machine": json.loads(Path(args.machine).read_text()) if args.machine else machine(),
    }
    lines = [f"# Held-out report: `{args.study}`, {args.folds} folds, {args.epochs} epochs at most",
             "", f"Search: {args.trials} trials budget ({result['trials']}), {phase['workers']} "
             f"worker processes on one GPU, {phase['wall_seconds']:.0f} s; report "
             f"{report_wall:.0f} s.", "",
             f"**{verdict}**", "",
             "| recipe | epochs | train loss | held-out loss | gap | held-out acc |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['recipe']} | {r['epochs']} | {r['train_loss']:.4f} | {r['heldout_loss']:.4f} "
              f"| {r['gap']:.4f} | {r['heldout_accuracy']:.3f} |" for r in rows]
    lines += ["", "Cross-validation (mean best-epoch val loss): " + ", ".join(
        f"{k} {v:.4f}" for k, v in result["baselines_cv"].items() if v is not None)
        + (f"; best searched trial {result['best_cv_val_loss']:.4f}"
           if result["best_cv_val_loss"] else ""), "",
        f"Training throughput: {result['images_per_second_aggregate']:.0f} images/s aggregate over "
        f"the search phase, {result['images_per_second_inside_fit'] or 0:.0f} images/s per "
        f"process inside `fit`.", "",
        "Trial overhead (median, each worker's first trial left out): "
        f"{_seconds(result['median_first_step_seconds'])} from a trial's start to its first "
        f"training step, {_seconds(result['median_later_folds_first_step_seconds'])} from a "
        "later fold's start.", "", machine_table(result["machine"])]
    md = "\n".join(lines) + "\n"
    print(md)
    print(f"written: {write_result(f'heldout-{args.study}', result, md)}")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("search", "report"))
    p.add_argument("--root", required=True, help="folder of the study's stores")
    p.add_argument("--study", default="tinyimagenet")
    p.add_argument("--data-dir")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--timeout", type=float, default=420)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--summarize-only", action="store_true",
                   help="report: only summarize the stores (figures measured elsewhere)")
    p.add_argument("--report-seconds", type=float, help="report: wall time measured elsewhere")
    p.add_argument("--machine", help="report: JSON file describing the machine that measured")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    (search if args.phase == "search" else report)(args)


if __name__ == "__main__":
    main()
