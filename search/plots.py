"""Draw a study's plots to PNG files: optimization history, importances, pruning curves, and the
objective against each regularization strength (slice)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.names import SETTINGS_ATTR

# slice: one panel per strength, CV loss against its value (log axes for L1/L2): how strong a
# penalty, dropout or augmentation the good trials used, which is what a user comes to see
PLOTS = ("optimization_history", "param_importances", "intermediate_values", "slice")
OBJECTIVE = "cv val_loss"
# the pruning-curve plot names this many of the best complete trials, each in its own colour
N_NAMED = 5
_NAMED_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")
_OFF_DECADES = 1.0  # on a log axis, "off" is drawn this many decades left of the range


def save_study_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Save each plot that the study has enough trials for.

    Returns:
        ``(written, skipped)``: the PNG files, and for each plot not drawn, why (for example,
        parameter importances need at least two complete trials).
    """
    # matplotlib, with Agg chosen before pyplot starts: only the launcher draws, once a study
    # ends (workers never do; pyplot and Optuna's plots take about 0.3 s without TensorFlow)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    from optuna.visualization import matplotlib as ov

    draw = {"optimization_history": lambda: ov.plot_optimization_history(
                study, target_name=OBJECTIVE),
            "param_importances": lambda: ov.plot_param_importances(study, target_name=OBJECTIVE),
            "intermediate_values": lambda: _pruning_curves(study, plt),
            "slice": lambda: _slice(study, plt)}
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw[name]()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc)
            continue
        figure = ax.figure
        if name in ("optimization_history", "param_importances"):
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
        for axes in figure.axes:  # log axes (L1, L2): label the decades only, legibly
            if axes.get_xscale() == "log":
                axes.xaxis.set_minor_formatter(NullFormatter())
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written, skipped


def _finite(trial: FrozenTrial) -> bool:
    return trial.value is not None and math.isfinite(trial.value)


def slice_params(study: optuna.Study) -> list[str]:
    """The strengths the slice plot draws, in the order of the space: every parameter of a
    complete trial, a ``<name>_on`` switch standing for ``<name>`` (so a penalty that every
    complete trial had off still gets its panel, all "off")."""
    names: dict[str, None] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for param in trial.params:
            names[param.removesuffix("_on")] = None
    return list(names)


def _slice(study: optuna.Study, plt: Any) -> Any:
    """CV loss against each strength, one panel per strength, coloured by trial number.

    Optuna's slice plot leaves out a trial without the parameter, so the trials with a penalty
    off (often the best) were missing from the L1 and L2 panels: here they stand at "off", left
    of the axis. The best trial is ringed.
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if _finite(t)]
    names = slice_params(study)
    if not complete or not names:
        raise ValueError("the slice plot needs a complete trial")
    best = min(complete, key=lambda t: t.value)
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 4), sharey=True,
                                squeeze=False)
    numbers = [t.number for t in complete]
    norm = plt.Normalize(min(numbers), max(max(numbers), min(numbers) + 1))
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, names):
        dist = next((t.distributions[name] for t in complete if name in t.distributions), None)
        log = bool(getattr(dist, "log", False))
        off_x = _off_position(dist, log)
        xs = []
        for trial in complete:
            if name in trial.params:
                x = trial.params[name]
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    x = dist.choices.index(x)
            else:  # the switch is off
                x = off_x
            xs.append(x)
        ax.scatter(xs, [t.value for t in complete], c=numbers, cmap=cmap, norm=norm,
                   edgecolors="grey", linewidths=0.5, s=36, zorder=3)
        best_x = xs[complete.index(best)]
        ax.scatter([best_x], [best.value], s=140, facecolors="none", edgecolors="#d62728",
                   linewidths=1.5, zorder=4, label=f"best: trial {best.number}")
        _axis(ax, name, dist, log, off_x, any(x == off_x for x in xs))
    _log_if_wide(axes.flat[0], [t.value for t in complete])
    axes.flat[0].set_ylabel(f"{OBJECTIVE} (objective)")
    axes.flat[0].legend(loc="upper left", fontsize=8)
    colourbar = figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes.flat),
                                pad=0.01)
    colourbar.set_label("trial")
    figure.suptitle(f"{OBJECTIVE} against each strength (complete trials)")
    return axes.flat[0]


def _off_position(dist: Any, log: bool) -> float:
    if dist is None or isinstance(dist, optuna.distributions.CategoricalDistribution):
        return -1.0
    if log:
        return dist.low / 10 ** _OFF_DECADES
    return dist.low - 0.15 * (dist.high - dist.low)


def _axis(ax: Any, name: str, dist: Any, log: bool, off_x: float, has_off: bool) -> None:
    """Scale, range and ticks of one slice panel: ``off`` left of the strength's range."""
    ax.set_xlabel(name)
    ax.grid(alpha=0.3)
    if dist is None:  # every complete trial had it off
        ax.set_xticks([off_x], ["off"])
        return
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
        return
    if log:
        ax.set_xscale("log")
        low, high = off_x / 10 ** 0.3, dist.high * 10 ** 0.3
        ax.set_xlim(low, high)
        decades = range(math.ceil(math.log10(dist.low)), math.floor(math.log10(dist.high)) + 1)
        ticks = [10.0 ** d for d in decades]
        labels = [f"1e{d}" for d in decades]
        separator = math.sqrt(off_x * dist.low)
    else:
        span = dist.high - dist.low
        ax.set_xlim(off_x - 0.1 * span if has_off else dist.low - 0.05 * span,
                    dist.high + 0.05 * span)
        ticks, labels = list(ax.get_xticks()), None
        ticks = [t for t in ticks if dist.low <= t <= dist.high]
        labels = [f"{t:g}" for t in ticks]
        separator = dist.low - 0.075 * span
    if has_off:
        ax.axvline(separator, color="grey", linestyle=":", linewidth=1)
        ticks, labels = [off_x, *ticks], ["off", *labels]
    ax.set_xticks(ticks, labels)


def _pruning_curves(study: optuna.Study, plt: Any) -> Any:
    """What each trial reported to the pruner, step by step, coloured by outcome.

    The best complete trials get a colour and a legend entry each (trial number and score); the
    other complete trials are pale blue, pruned ones grey (ending in a cross where they were
    stopped), failed ones red. Optuna's own plot gives every trial a colour from a cycle of
    ten, so in a 30-trial study trials 21-29 all read light blue.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise ValueError("no trial has reported an intermediate value")
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and _finite(t)),
                      key=lambda t: t.value)
    named = {t.number: colour for t, colour in zip(complete[:N_NAMED], _NAMED_COLOURS)}
    figure, ax = plt.subplots(figsize=(10, 5.5))
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    rank = {t.number: i for i, t in enumerate(complete)}
    # the named ones last (on top), the best of them last of all
    for trial in sorted(trials, key=lambda t: (t.number in named, -rank.get(t.number, 0))):
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        if trial.number in named:
            ax.plot(steps, values, color=named[trial.number], linewidth=2, zorder=3,
                    label=f"trial {trial.number}: {trial.value:.4f}")
        elif trial.state == TrialState.COMPLETE:
            ax.plot(steps, values, color="#9ecae1", linewidth=1,
                    label=once("other complete trials"))
        elif trial.state == TrialState.PRUNED:
            ax.plot(steps, values, color="#999999", linewidth=1, label=once("pruned"))
            ax.plot(steps[-1:], values[-1:], marker="x", color="#555555", linestyle="none")
        else:
            ax.plot(steps, values, color="#e377c2", linewidth=1, linestyle="--",
                    label=once("failed or interrupted"))
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    max_epochs, n_folds = settings.get("max_epochs"), settings.get("n_folds")
    if max_epochs and n_folds:
        for fold in range(1, n_folds):
            ax.axvline(fold * max_epochs - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks([f * max_epochs for f in range(n_folds)],
                      [f"fold {f + 1}" for f in range(n_folds)])
        ax.set_xlabel(f"fold and epoch ({max_epochs} epochs a fold)")
    else:
        ax.set_xlabel("step (fold x max_epochs + epoch)")
    _log_if_wide(ax, [v for t in trials for v in t.intermediate_values.values()])
    ax.set_ylabel(f"reported {OBJECTIVE} (mean best loss of the folds so far)")
    ax.set_title("pruning curves: what each trial reported to the pruner")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # the named trials, best first, then the groups
    order = sorted(range(len(labels)), key=lambda i: (labels[i] in labelled,
                                                      rank.get(_number(labels[i]), 0)))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
              loc="upper right")
    figure.tight_layout()
    return ax


def _number(label: str) -> int:
    """The trial number of a legend label ``trial 12: 0.0345``."""
    return int(label.split(":")[0].removeprefix("trial ")) if label.startswith("trial ") else -1


def _log_if_wide(ax: Any, values: list[float]) -> None:
    """A log y axis, with plain tick labels, when the values span more than a factor of 10 (a
    trial stuck at chance level would otherwise flatten the good ones)."""
    from matplotlib.ticker import FormatStrFormatter  # matplotlib: as in `save_study_plots`

    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
