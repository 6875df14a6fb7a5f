"""Aggregate training throughput (images/s) of a study run by 1, 2, 4 (8) worker processes.

    python -m benchmarks.throughput --study digits --workers 1 2 4 --precisions float32 bfloat16

For every (precision, workers) setting, runs ``python -m search.run`` as a subprocess into a
fresh temporary store with a fixed trial budget and ``--pruner none``:

- on a GPU host: ``--gpus 0 --workers-per-gpu N`` (N processes sharing one GPU);
- on a CPU host: ``--gpus 0,1,..`` with ``CUDA_VISIBLE_DEVICES`` set to N fake ids, which makes
  the launcher start N workers that all train on the CPU.

Images trained = sum over the study's trials of ``epochs_trained`` x the fold training size
(n_train * (k-1) / k, n_train from the study's ``regsearch.data`` attribute); throughput = that
over the wall time of the whole ``search.run`` process (start-up, data, Optuna, MLflow and
plots included). Also shown: the share of worker time spent inside Keras ``fit``.

Reference: a "plain Keras process" (a subprocess too) that loads the same data, builds and
compiles the same model once (the study's default recipe) and fits it on fold 0's training
split, with validation, for trials x folds x epochs (the most a run can train), no early
stopping, no Optuna, no MLflow; its images/s counts only the seconds inside ``fit`` (its one
compilation included; steady state, without the first epoch, shown too). The table gives
each setting's ratio to it.

Results go to benchmarks/results/throughput-<study>-<cpu|gpu>[-<backend>].{json,md}. CPU figures say how
the launcher behaves, nothing about a GPU: N processes share the same few cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parent.parent


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: str, timeout: float) -> tuple[int, float, str]:
    """Run ``cmd`` in its own process group; return (exit code, wall seconds, output tail)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its workers
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return 124, time.perf_counter() - start, out[-3000:]
    return proc.returncode, time.perf_counter() - start, out[-3000:]


def _common_args(args: argparse.Namespace) -> list[str]:
    out = ["--study", args.study, "--epochs", str(args.epochs), "--folds", str(args.folds),
           "--seed", str(args.seed)]
    for s in args.set:
        out += ["--set", s]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    if args.backend:
        out += ["--backend", args.backend]
    return out


def _study_run(args: argparse.Namespace, workers: int, precision: str, gpu: bool) -> dict[str, Any]:
    """One ``search.run`` with ``workers`` processes; images/s from its trials and wall time."""
    import optuna

    from benchmarks._common import trial_overheads
    from search.config import build_config
    from search.names import DATA_ATTR, EPOCHS_TRAINED, FIT_SECONDS

    name = build_config(args.study, overrides=args.set).name
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/optuna.db"
        cmd = [sys.executable, "-m", "search.run", *_common_args(args),
               "--trials", str(args.trials), "--pruner", "none", "--precision", precision,
               "--storage", storage, "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
               "--no-progress", "--no-report"]
        if gpu:
            cmd += ["--gpus", args.gpu_id, "--workers-per-gpu", str(workers)]
            extra: dict[str, str] = {}
        else:
            ids = ",".join(str(i) for i in range(workers))
            cmd += ["--gpus", ids]
            extra = {"CUDA_VISIBLE_DEVICES": ids}
        code, wall, tail = _run(cmd, env=_env(extra), cwd=tmp, timeout=args.run_timeout)
        row: dict[str, Any] = {"workers": workers, "precision": precision, "exit_code": code,
                               "wall_seconds": wall}
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception as exc:  # noqa: BLE001 (reported in the row)
            row["error"] = f"{type(exc).__name__}: {exc}; output: {tail[-800:]}"
            return row
        trials = study.get_trials(deepcopy=False)
        n_train = int(study.user_attrs[DATA_ATTR]["n_train"])
        failed_epochs = _failed_epochs(trials, f"sqlite:///{tmp}/mlflow.db", args.folds)
    fold_train = n_train * (args.folds - 1) / args.folds
    epochs = sum(t.user_attrs.get(EPOCHS_TRAINED, 0.0) for t in trials) + failed_epochs
    fit = sum(t.user_attrs.get(FIT_SECONDS, 0.0) for t in trials)
    states = [t.state.name for t in trials]
    row.update({
        "trials": len(trials), "complete": states.count("COMPLETE"), "failed": states.count("FAIL"),
        "epochs_trained": int(epochs), "failed_trial_epochs": failed_epochs,
        "images": epochs * fold_train,
        "images_per_second": epochs * fold_train / wall,
        "fit_seconds": fit, "fit_share": fit / (workers * wall),
        **trial_overheads(trials),
    })
    if code != 0:
        row["error"] = f"exit {code}; output: {tail[-800:]}"
    return row


def _failed_epochs(trials: list, tracking_uri: str, n_folds: int) -> int:
    """Epochs that FAIL trials trained (they record no ``epochs_trained``), from MLflow.

    A trial that fails at chance level has logged the curves of every fold it finished.
    """
    from mlflow.tracking import MlflowClient

    from search.names import RUN_ID_ATTR

    client, total = MlflowClient(tracking_uri), 0
    for t in trials:
        if t.state.name != "FAIL" or RUN_ID_ATTR not in t.user_attrs:
            continue
        for k in range(n_folds):
            total += len(client.get_metric_history(t.user_attrs[RUN_ID_ATTR],
                                                   f"fold_{k}/val_loss"))
    return total


def _plain(args: argparse.Namespace, precision: str, gpu: bool) -> dict[str, Any]:
    """The plain Keras reference, in its own process (``--plain``)."""
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--plain", *_common_args(args),
           "--trials", str(args.trials), "--precisions", precision]
    extra = {"CUDA_VISIBLE_DEVICES": args.gpu_id if gpu else "0"}  # as the 1-worker run
    code, wall, tail = _run(cmd, env=_env(extra), cwd=str(ROOT), timeout=args.run_timeout)
    for line in reversed(tail.splitlines()):
        if line.startswith("{"):
            return {**json.loads(line), "process_wall_seconds": wall}
    return {"precision": precision, "error": f"exit {code}: {tail[-800:]}",
            "process_wall_seconds": wall}


def plain_keras(args: argparse.Namespace) -> dict[str, Any]:
    """One model compiled once, fit on fold 0's training split for trials x folds x epochs.

    That is the most epochs the study's runs can train (no early stopping here). Returns
    images/s over the whole ``fit`` call (the one compilation included, as a worker pays it
    once) and at steady state (every epoch after the first).
    """
    precision = args.precisions[0]
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    from search.config import build_config
    from search.datasets import load_data
    from search.recording import make_recipe
    from search.training import prepare_training
    from trainers.fit import compile_model

    config = build_config(args.study, max_epochs=args.epochs, n_folds=args.folds,
                          seed=args.seed, overrides=args.set).replace(precision=precision)
    data = load_data(config.spec.data, where=str(config.spec.path), seed=config.seed,
                     data_dir=args.data_dir, progress=False)
    training = prepare_training(config, data)  # sets the precision, as a study does
    recipe = make_recipe(config, config.spec.space.defaults())
    fold = training.folds[0]
    train, val = data.train.subset(fold.train), data.train.subset(fold.val)
    epochs = args.trials * config.n_folds * config.max_epochs
    keras.utils.set_random_seed(config.seed)
    model = compile_model(training.build(recipe), recipe)
    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(train.x, train.y, validation_data=(val.x, val.y), batch_size=recipe.batch_size,
              epochs=epochs, verbose=0, callbacks=[Clock()])
    seconds = time.perf_counter() - start
    images = epochs * len(train)
    steady = (epochs - 1) * len(train) / (ends[-1] - ends[0]) if epochs > 1 else math.nan
    return {"precision": precision, "epochs": epochs, "images": images, "fit_seconds": seconds,
            "first_epoch_seconds": ends[0] - start, "images_per_second": images / seconds,
            "steady_images_per_second": steady, "backend": keras.backend.backend()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="digits")
    p.add_argument("--trials", type=int, default=8, help="trial budget of every run")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                   choices=["float32", "bfloat16"])
    p.add_argument("--mode", choices=["auto", "gpu", "cpu"], default="auto",
                   help="gpu: --workers-per-gpu on one GPU; cpu: fake GPU ids (default: gpu "
                        "when nvidia-smi lists one)")
    p.add_argument("--gpu-id", default="0", help="the GPU the workers share (gpu mode)")
    p.add_argument("--backend", choices=["jax", "tensorflow", "torch"])
    p.add_argument("--data-dir")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an entry of the study file (repeatable)")
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds per run at most")
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        print(json.dumps(plain_keras(args)), flush=True)
        return

    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend  # for the subprocesses and machine()
    from benchmarks._common import machine, machine_table, write_result

    if args.mode == "auto":
        import shutil

        from search.gpus import visible_gpus

        gpu = shutil.which("nvidia-smi") is not None and bool(visible_gpus())
    else:
        gpu = args.mode == "gpu"
    where = "gpu" if gpu else "cpu"
    started = time.perf_counter()
    rows, plains = [], {}
    for precision in args.precisions:
        plains[precision] = _plain(args, precision, gpu)
        print({"plain": plains[precision]}, flush=True)
        for workers in args.workers:
            rows.append(_study_run(args, workers, precision, gpu))
            print(rows[-1], flush=True)
    total = time.perf_counter() - started

    def clean(text: str) -> str:
        return " ".join(text.split()).replace("|", "/")[:200]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def fmt(row: dict[str, Any]) -> str:
        ref = plains[row["precision"]].get("images_per_second")
        if "images_per_second" not in row:
            return (f"| {row['precision']} | {row['workers']} | - | - | - | - | - | - | - | "
                    f"failed: {clean(row.get('error', ''))} |")
        ratio = f"{row['images_per_second'] / ref:.2f}" if ref else "-"
        note = clean(row.get("error", ""))
        if row["failed"]:
            note += (f" ({row['failed']} failed trial(s): their {row['failed_trial_epochs']} "
                     f"epochs counted from MLflow)")
        return (f"| {row['precision']} | {row['workers']} | {row['trials']} | "
                f"{row['epochs_trained']} | {row['wall_seconds']:.1f} | "
                f"{row['images_per_second']:,.0f} | {100 * row['fit_share']:.0f}% | "
                f"{seconds(row.get('median_first_step_seconds'))} | "
                f"{seconds(row.get('median_later_folds_first_step_seconds'))} | "
                f"{ratio} {note}|")

    nan = float("nan")
    plain_lines = "\n".join(
        f"| {p} | {r.get('epochs', '-')} | {r.get('fit_seconds', nan):.1f} | "
        f"{r.get('first_epoch_seconds', nan):.1f} | {r.get('images_per_second', nan):,.0f} | "
        f"{r.get('steady_images_per_second', nan):,.0f} | {r.get('process_wall_seconds', nan):.1f} "
        f"{clean(r.get('error', ''))}|" for p, r in plains.items())
    sets = "".join(f" --set {s}" for s in args.set)
    cmd = (f"python -m benchmarks.throughput --study {args.study} --trials {args.trials} "
           f"--epochs {args.epochs} --folds {args.folds} --workers "
           f"{' '.join(map(str, args.workers))} --precisions {' '.join(args.precisions)} "
           f"--mode {where}{sets}" + (f" --backend {args.backend}" if args.backend else ""))
    how = (f"`--gpus {args.gpu_id} --workers-per-gpu N` (N processes on one GPU)" if gpu else
           "`--gpus 0,..,N-1` with `CUDA_VISIBLE_DEVICES` set to N fake ids: N worker processes, "
           f"all training on the CPU ({os.cpu_count()} cores shared)")
    md = (
        f"# Training throughput of a `{args.study}` study by worker count ({where.upper()}, "
        f"Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')})\n\n"
        f"`{cmd}`\n\n"
        f"Each run: `python -m search.run` with {how}, {args.trials} trials, {args.folds} folds "
        f"x {args.epochs} epochs at most (early stopping still applies), `--pruner none`, fresh "
        f"temporary store. Images/s = sum of trials' epochs trained x fold training size / wall "
        f"time of the whole run (start-up, data, Optuna, MLflow included). In fit = share of "
        f"the N workers' time spent inside Keras `fit`. Trial -> 1st step: median time from a "
        f"trial's start to its first training step, each worker's first trial (its one "
        f"compilation) left out; fold -> 1st step: the same from the start of each later "
        f"fold.\n\n"
        f"| precision | workers | trials | epochs trained | wall s | images/s | in fit | "
        f"trial -> 1st step s | fold -> 1st step s | x plain |\n"
        f"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(fmt(r) for r in rows) + "\n\n"
        f"Plain Keras process (reference): the same model (built and compiled once) and "
        f"data, the study's default recipe, fit on fold 0's training split for trials x folds x "
        f"epochs = {args.trials * args.folds * args.epochs} epochs in one `fit` call with "
        f"validation, no early stopping, no Optuna/MLflow. `x plain` divides by its images/s over "
        f"the whole `fit` (its one compilation included, as each worker pays one); steady state "
        f"leaves out the first epoch.\n\n"
        f"| precision | epochs | fit s | first epoch s | images/s | steady images/s | "
        f"process wall s |\n| --- | --- | --- | --- | --- | --- | --- |\n"
        f"{plain_lines}\n\n"
        + ("" if gpu else "CPU host: these figures show the launcher's behaviour and overhead; "
           "with N processes sharing the same few cores they say nothing about a GPU.\n\n")
        + f"Whole benchmark: {total:.0f} s wall.\n\n" + machine_table(machine())
    )
    result = {"command": cmd, "mode": where, "study": args.study, "trials": args.trials,
              "folds": args.folds, "max_epochs": args.epochs, "overrides": args.set,
              "rows": rows, "plain": plains, "total_wall_seconds": total, "machine": machine()}
    name = f"throughput-{args.study}-{where}" + (f"-{args.backend}" if args.backend else "")
    md += f"\n![images/s and share in fit by worker count]({name}.png)\n"
    print(md)
    path = write_result(name, result, md)
    plot(result, path.with_suffix(".png"))
    print(f"written: {path} and {path.with_suffix('.png').name}")


TARGET_IMAGES_PER_SECOND = 200_000  # on one H100 (issue "Scale")


def plot(result: dict, path: Path) -> None:
    """Aggregate images/s and share of time in `fit` against workers, one line per precision;
    dotted: 4x the plain process of the same precision; on a GPU, the 200,000 images/s target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, share) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, precision in enumerate(dict.fromkeys(r["precision"] for r in result["rows"])):
        rows = sorted((r for r in result["rows"] if r["precision"] == precision
                       and r.get("images_per_second")), key=lambda r: r["workers"])
        if not rows:
            continue
        workers = [r["workers"] for r in rows]
        speed.plot(workers, [r["images_per_second"] for r in rows], marker="o", color=f"C{i}",
                   label=precision)
        share.plot(workers, [100 * r["fit_share"] for r in rows], marker="o", color=f"C{i}",
                   label=precision)
        plain = result["plain"].get(precision, {}).get("images_per_second")
        if plain:
            speed.axhline(4 * plain, color=f"C{i}", ls=":", lw=1,
                          label=f"4x one plain Keras process ({precision})")
    if result["mode"] == "gpu":
        speed.axhline(TARGET_IMAGES_PER_SECOND, color="tab:red", ls="--", lw=1,
                      label="target: 200,000 images/s")
    for ax in (speed, share):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["workers"] for r in result["rows"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("worker processes" + (" on one GPU" if result["mode"] == "gpu" else ""))
        ax.grid(alpha=0.3)
    speed.set_ylabel("training images/s, whole run")
    speed.set_ylim(bottom=0)
    speed.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    speed.legend(fontsize=8)
    share.set_ylabel("time inside Keras fit (%)")
    share.set_ylim(0, 100)
    fig.suptitle(f"Throughput of a `{result['study']}` study ({result['mode'].upper()}): "
                 f"{result['trials']} trials, {result['folds']} folds x {result['max_epochs']} "
                 f"epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
