"""Command line: write a study's selected recipe. ``python -m search.export --study digits``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from search.redact import redact_url

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.export",
        description="Write the best trial's regularization recipe, with provenance, as YAML or JSON.",
    )
    p.add_argument("--study", required=True, help="study name or study .yaml file")
    p.add_argument("--format", choices=("yaml", "json"), help="file format (default: from -o, else yaml)")
    p.add_argument("-o", "--output", help="output file (default: <study>_recipe.<format>)")
    p.add_argument("--trial", type=int, help="export this trial number instead of the best")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path = export(args.study, output=args.output, fmt=args.format, trial_number=args.trial,
                      storage=args.storage,
                      on_replace=lambda line: print(line, file=sys.stderr))
    except (LookupError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return 0


def export(study: str, *, output: str | None = None, fmt: str | None = None,
           trial_number: int | None = None, storage: str | None = None,
           on_replace: Callable[[str], None] | None = None) -> Path:
    """Write the recipe of the best (or a given, complete) trial of ``study``; return the file.

    An existing file is overwritten, and ``on_replace`` is told so in one line that says
    which recipe the file held (`replaced_line`).

    Raises:
        LookupError: no such study in the storage, or no such trial.
        ValueError: the study has no complete trial yet, or the trial is not complete.
    """
    # the study files: after --help, which argparse answers alone
    from search.config import default_storage
    from spaces import load_study

    # a study file's study is its `name:`, as `search.run` stores it (not the file's stem)
    name = load_study(study).name if study.endswith((".yaml", ".yml")) else study
    storage = storage or default_storage()
    local = (Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///")
             else None if "://" in storage else Path(storage))
    if local is not None and not local.exists():
        raise LookupError(f"no study storage at {storage}; run `python -m search.run --study "
                          f"{name}` first, or pass --storage.")
    # Optuna and the database drivers: once there is a storage to open
    import optuna
    from optuna.trial import TrialState

    from search.recipe_file import recipe_document, write_recipe
    from search.selection import at_chance, n_classes_of, nothing_selected, selected_trial
    from search.study import open_storage, quiet_optuna

    quiet_optuna()
    opened = open_storage(storage)  # a URL that cannot be opened: ValueError, one line
    try:
        loaded = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        known = optuna.get_all_study_names(storage=opened)
        raise LookupError(f"no study {name!r} in {redact_url(storage)}; stored studies: "
                          f"{', '.join(known) or 'none'}.") from None
    if trial_number is None:
        trial = selected_trial(loaded)
        if trial is None:
            raise ValueError(nothing_selected(loaded))
    else:
        by_number = {t.number: t for t in loaded.get_trials(deepcopy=False)}
        if trial_number not in by_number:
            raise LookupError(f"study {name!r} has no trial {trial_number}; trials are "
                              f"0..{len(by_number) - 1}.")
        trial = by_number[trial_number]
        if trial.state != TrialState.COMPLETE:
            raise ValueError(f"trial {trial_number} of {name!r} is {trial.state.name}; only a "
                             f"complete trial has a recipe to export.")
        if at_chance(trial, n_classes_of(loaded)):
            raise ValueError(f"trial {trial_number} of {name!r} did not beat chance level "
                             f"(cv val_loss {trial.value:.4g}): its recipe learned nothing; "
                             f"export a trial that did, or leave out --trial for the selected one.")
    fmt = fmt or ("json" if output and output.endswith(".json") else "yaml")
    output = output or f"{name}_recipe.{fmt}"
    document = recipe_document(loaded, trial, storage=redact_url(storage))
    replaced = replaced_line(Path(output), document) if Path(output).exists() else None
    path = write_recipe(document, output, fmt)
    if replaced and on_replace is not None:
        on_replace(replaced)
    return path


def replaced_line(path: Path, new: dict) -> str:
    """``overwrote digits_recipe.yaml (it held trial 12 of study digits; now trial 17)``."""
    from search.recipe_file import read_recipe  # as in `export`

    try:
        old = read_recipe(path)
        held = f"trial {old.get('trial')} of study {old.get('study')}"
    except Exception:  # noqa: BLE001 (unreadable, not YAML, not a recipe: say so, write anyway)
        held = "no regsearch recipe"
    return (f"overwrote {path} (it held {held}; now trial {new['trial']} of study "
            f"{new['study']})")


if __name__ == "__main__":
    sys.exit(main())
