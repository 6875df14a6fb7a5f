"""Draw a study's Optuna plots to PNG files: optimization history, importances, intermediate
values, and the objective against each regularization strength (slice)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

# slice: one panel per parameter, CV loss against its value (log axes for L1/L2): how strong a
# penalty, dropout or augmentation the good trials used, which is what a user comes to see
PLOTS = ("optimization_history", "param_importances", "intermediate_values", "slice")


def save_study_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Save each plot that the study has enough trials for.

    Returns:
        ``(written, skipped)``: the PNG files, and for each plot not drawn, why (for example,
        parameter importances need at least two complete trials).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    from optuna.visualization import matplotlib as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ov, f"plot_{name}")(study, **_options(name, study))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc)
            continue
        panels = 1 if hasattr(ax, "figure") else ax.size
        figure = ax.figure if panels == 1 else ax.flat[0].figure
        figure.set_size_inches(max(9, 3 * panels), 5.5 if panels == 1 else 4)
        if panels == 1:  # Optuna lays out its slice panels and their colour bar itself
            figure.tight_layout()
        for axes in figure.axes:  # log axes (L1, L2): label the decades only, legibly
            if axes.get_xscale() == "log":
                axes.xaxis.set_minor_formatter(NullFormatter())
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written, skipped


def _options(name: str, study: optuna.Study) -> dict:
    """The slice leaves out the ``<name>_on`` switches: a trial with the penalty off is simply
    absent from that penalty's panel, and the panels left fit one row."""
    if name != "slice":
        return {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({p for t in complete for p in t.params})  # the slice draws these only
    return {"params": [p for p in names if not p.endswith("_on")]}
