"""Does seeding the sampler per trial change how fast TPE finds good recipes? No training.

    python -m benchmarks.seeding --seeds 60 --trials 30

regsearch seeds its sampler for every trial from (study seed, trial number) so that processes
sharing a study never draw the same recipes (`search.study.PerTrialSeed`); before, each
process seeded it once from the study seed. Trained searches are too noisy to tell the two
apart with a handful of seeds (on `digits`, 5 seeds each, the efficiency figure moved from 0.16
to 0.41 between two runs of the same settings). So this runs both ways on a cheap stand-in for
a trained search: the `digits` space, and a smooth made-up loss over its recipes (lowest at
dropout 0.3, augmentation 0.4, L2 about 3e-5, L1 off, patience 7). For each seed, TPE with
regsearch's options and random search each run ``--trials`` trials, and the figure is the
number of TPE trials needed to reach random search's best. Results go to
benchmarks/results/seeding.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings


def loss(recipe: dict[str, float]) -> float:
    """The stand-in for a trial's CV loss: smooth in every strength, a price for no L2."""
    value = (0.1 + 0.3 * (recipe["dropout"] - 0.3) ** 2 + 0.2 * (recipe["augment"] - 0.4) ** 2
             + 0.002 * (recipe["patience"] - 7) ** 2)
    value += 0.01 * (math.log10(recipe["l2"]) + 4.5) ** 2 if recipe["l2"] > 0 else 0.03
    value += 0.01 * (math.log10(recipe["l1"]) + 6) ** 2 if recipe["l1"] > 0 else 0.0
    return value


def search(sampler, space, trials: int) -> list[float]:  # noqa: ANN001
    import optuna

    from spaces import sample_params

    study = optuna.create_study(sampler=sampler)
    values = []
    for _ in range(trials):
        trial = study.ask()
        values.append(loss(sample_params(space, trial)))
        study.tell(trial, values[-1])
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=60, help="how many study seeds (0, 1, ...)")
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args()

    import optuna

    from benchmarks._common import machine, machine_table, write_result
    from search.config import build_config
    from search.study import TPE_DEFAULTS, make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    space = build_config("digits").spec.space

    def once_per_process(kind: str, seed: int) -> optuna.samplers.BaseSampler:
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, **TPE_DEFAULTS)

    def per_trial(kind: str, seed: int) -> optuna.samplers.BaseSampler:
        return make_sampler(build_config("digits", sampler=kind, seed=seed))

    rows = {}
    for label, make in (("once per process (before)", once_per_process),
                        ("per trial (regsearch)", per_trial)):
        reach, tpe_best, random_best = [], [], []
        for seed in range(args.seeds):
            tpe, rand = search(make("tpe", seed), space, args.trials), \
                search(make("random", seed), space, args.trials)
            at = next((i + 1 for i, v in enumerate(tpe) if v <= min(rand)), None)
            reach.append(args.trials + 1 if at is None else at)  # not reached: past the end
            tpe_best.append(min(tpe))
            random_best.append(min(rand))
        rows[label] = {
            "trials_to_random_best_median": statistics.median(reach),
            "trials_to_random_best_mean": statistics.mean(reach),
            "reached_within_a_fifth": sum(r <= args.trials / 5 for r in reach),
            "tpe_best_mean": statistics.mean(tpe_best),
            "random_best_mean": statistics.mean(random_best),
        }
        print(label, rows[label], flush=True)

    result = {"seeds": args.seeds, "trials": args.trials, "rows": rows, "machine": machine()}
    lines = [f"# Sampler seeding: once per process vs per trial ({args.seeds} seeds, "
             f"{args.trials} trials, no training)", "",
             f"`python -m benchmarks.seeding --seeds {args.seeds} --trials {args.trials}`", "",
             __doc__.split("\n\n", 2)[1].replace("\n", " "), "",
             "| seeding | TPE trials to random's best: median | mean | within a fifth of the "
             "budget | TPE best (mean) | random best (mean) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {label} | {r['trials_to_random_best_median']:g} | "
              f"{r['trials_to_random_best_mean']:.1f} | {r['reached_within_a_fifth']} of "
              f"{args.seeds} | {r['tpe_best_mean']:.4f} | {r['random_best_mean']:.4f} |"
              for label, r in rows.items()]
    markdown = "\n".join(lines) + "\n\n" + machine_table(result["machine"])
    print(markdown)
    print(f"written: {write_result('seeding', result, markdown)}")


if __name__ == "__main__":
    main()
