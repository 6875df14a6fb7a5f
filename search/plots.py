"""Draw a study's Optuna plots to PNG files: optimization history, importances, intermediate values."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

PLOTS = ("optimization_history", "param_importances", "intermediate_values")


def save_study_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Save each plot that the study has enough trials for.

    Returns:
        ``(written, skipped)``: the PNG files, and for each plot not drawn, why (for example,
        parameter importances need at least two complete trials).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ov, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc)
            continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written, skipped
