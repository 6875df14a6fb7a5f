"""Read a study file (YAML) into a validated `StudySpec`: data, model, fixed training settings, space."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spaces.checks import check_choice, check_float, check_int, check_keys
from spaces.space import FLOAT_DOMAINS, INT_DOMAINS, Space, parse_param

BUILTIN_DIR = Path(__file__).resolve().parent
SECTIONS = ("name", "description", "data", "model", "training", "search", "space")
# Fixed per study: the recipe fields a space may also search, plus the epoch budget.
TRAINING_KEYS = tuple(FLOAT_DOMAINS) + tuple(INT_DOMAINS) + ("max_epochs",)
SEARCH_KEYS = ("n_folds", "n_trials", "sampler", "pruner", "seed", "enqueue_defaults", "tpe",
               "fold_mode", "recipes_per_step")
SAMPLERS = ("tpe", "random")
# the folds a study may cross-validate on, in its file and with --folds: (low, high)
N_FOLDS_RANGE = (2, 20)
# Options of Optuna's TPESampler a study file may set under ``search.tpe`` (the rest of
# TPESampler's arguments are regsearch's to choose: seed, the trial filter...).
TPE_BOOL_OPTIONS = ("multivariate", "group", "constant_liar", "consider_endpoints")
TPE_INT_OPTIONS = {"n_startup_trials": 0, "n_ei_candidates": 1}
TPE_OPTIONS = TPE_BOOL_OPTIONS + tuple(TPE_INT_OPTIONS)
PRUNERS = ("hyperband", "sha", "median", "none")
# How a trial trains its folds: one after the other, or as copies in one compiled step
# (`trainers.batched`). Sequential until batched is measured faster on the backend.
FOLD_MODES = ("sequential", "batched")
# numpy's and Optuna's samplers take seeds below 2**32.
SEED_MAX = 2**32 - 1
# A study name is a folder name (mlruns/logs/<name>/) and an MLflow experiment: one plain file
# name, no path separators, nothing hidden.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SearchSettings:
    """How a study searches: folds, trial budget, sampler, pruner, seed, fold mode, recipes
    trained together in one step (with batched folds)."""

    n_folds: int = 5
    n_trials: int = 30
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    enqueue_defaults: bool = True
    tpe: dict[str, Any] = field(default_factory=dict)
    fold_mode: str = "sequential"
    recipes_per_step: int = 1

    def __post_init__(self) -> None:
        # Store what the checks return: YAML `n_folds: 3.0` passes check_int, and a float
        # left here would reach StratifiedKFold, which rejects it.
        for name, low, high in (("n_folds", *N_FOLDS_RANGE), ("n_trials", 1, None),
                                ("seed", 0, SEED_MAX), ("recipes_per_step", 1, None)):
            value = check_int(name, getattr(self, name), low=low, high=high)
            object.__setattr__(self, name, value)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("fold_mode", self.fold_mode, FOLD_MODES)
        if not isinstance(self.enqueue_defaults, bool):
            raise TypeError(
                f"'enqueue_defaults' must be true or false; got {self.enqueue_defaults!r}."
            )
        object.__setattr__(self, "tpe", check_tpe_options(self.tpe))


def check_tpe_options(options: Any) -> dict[str, Any]:
    """Return the ``search.tpe`` mapping checked: known TPESampler options with valid values.

    Raises:
        TypeError, ValueError: the message names the option and what it accepts.
    """
    options = check_keys("tpe", options, TPE_OPTIONS)
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in TPE_BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise TypeError(f"'tpe.{key}' must be true or false; got {value!r}.")
            checked[key] = value
        else:
            checked[key] = check_int(f"tpe.{key}", value, low=TPE_INT_OPTIONS[key])
    if checked.get("group") and checked.get("multivariate") is False:
        raise ValueError("'tpe.group' needs 'tpe.multivariate': true (TPE groups only a "
                         "multivariate model).")
    return checked


@dataclass(frozen=True)
class StudySpec:
    """Everything a study file declares.

    Attributes:
        name: the study name (Optuna study and MLflow experiment).
        path: the file it came from.
        data: loader settings; ``source`` names the loader, the rest are its options.
        model: model settings; ``name`` names the builder, the rest are its options.
        training: fixed recipe values shared by every trial (``max_epochs``, ``learning_rate``...).
        search: folds, trial budget, sampler, pruner, seed.
        space: the searched parameters.
    """

    name: str
    path: Path
    data: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    search: SearchSettings
    space: Space
    description: str = ""


def builtin_studies() -> list[str]:
    """Return the names of the study files shipped in `spaces/`."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_study(study: str) -> Path:
    """Return the file of a built-in study name or of a path to a ``.yaml`` file.

    Raises:
        LookupError: neither a built-in name nor an existing file; the message lists the names.
    """
    candidate = Path(study)
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            raise ValueError(f"study file {study!r} is a folder; expected a study .yaml file "
                             f"(e.g. one of spaces/*.yaml).")
        raise LookupError(f"study file {study!r} does not exist.")
    builtin = BUILTIN_DIR / f"{study}.yaml"
    if builtin.is_file():
        return builtin
    raise LookupError(
        f"unknown study {study!r}; known studies: {', '.join(builtin_studies())} "
        f"(or a path to a study .yaml file)."
    )


def load_study(study: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Load and check a built-in study by name, or a study file by path.

    Args:
        study: a built-in study name or a path to a ``.yaml`` study file.
        overrides: ``section.key=value`` strings (``--set`` on the command line) applied to
            the file before it is checked, e.g. ``data.n_classes=3`` or
            ``space.dropout.high=0.4``; values are read as YAML.

    Raises:
        LookupError: unknown study name.
        ValueError, TypeError: a bad entry or override; the message names the file and the key.
    """
    path = resolve_study(str(study))
    where = str(path if not path.is_relative_to(BUILTIN_DIR) else f"spaces/{path.name}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not a text file (byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start} is not UTF-8); a study file is YAML text.") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None
    for override in overrides:
        raw = apply_override(raw, override, where=where)
    return parse_study(raw, path=path, where=where)


def _plain(name: str) -> str:
    """``name`` with every character a study name does not allow made ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "study"


def apply_override(raw: Any, override: str, *, where: str = "") -> dict[str, Any]:
    """Return a copy of the study mapping ``raw`` with one ``a.b.c=value`` override applied.

    Raises:
        ValueError: no ``=``, or a first part that is not a section of a study file.
    """
    prefix = f"{where}: " if where else ""
    dotted, sep, text = override.partition("=")
    keys = dotted.strip().split(".")
    if not sep or not all(keys):
        raise ValueError(f"{prefix}--set {override!r} is not of the form section.key=value "
                         f"(e.g. data.n_classes=3).")
    if keys[0] not in SECTIONS:
        raise ValueError(f"{prefix}--set {override!r}: unknown section {keys[0]!r}. "
                         f"Valid sections: {', '.join(SECTIONS)}.")
    out = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    node = out
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    try:
        node[keys[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[keys[-1]] = text
    return out


def parse_study(raw: Any, *, path: Path, where: str) -> StudySpec:
    """Check a parsed study mapping and return it as a `StudySpec` (see `load_study`)."""
    raw = check_keys("study file", raw, SECTIONS, where=where)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{where}: 'name' must be a non-empty string; got {name!r}.")
    if not STUDY_NAME.fullmatch(name):
        origin = "" if "name" in raw else " (from the file name; set 'name:' to choose another)"
        raise ValueError(
            f"{where}: 'name'={name!r}{origin} is not a plain name; expected letters, digits, "
            f"'_', '-' and '.' (not first), e.g. {_plain(name)!r}: the name is a folder under "
            f"mlruns/logs/ and an MLflow experiment.")

    data = check_keys("data", raw.get("data") or {"source": "digits"}, None, where=where)
    if "source" not in data:
        raise ValueError(f"{where}: 'data' needs 'source' (digits, tinyimagenet or folder).")
    model = check_keys("model", raw.get("model") or {}, None, where=where)
    if "name" not in model:
        raise ValueError(f"{where}: 'model' needs 'name' (for example mlp or seed_cnn).")

    training = check_keys("training", raw.get("training"), TRAINING_KEYS, where=where)
    for key, value in list(training.items()):
        if key in INT_DOMAINS or key == "max_epochs":
            training[key] = check_int(f"training.{key}", value, low=1, where=where)
        else:
            low, high, low_open, high_open = FLOAT_DOMAINS[key]
            training[key] = check_float(
                f"training.{key}", value, low=low, high=high, low_open=low_open,
                high_open=high_open, where=where,
            )

    search_raw = check_keys("search", raw.get("search"), SEARCH_KEYS, where=where)
    try:
        search = SearchSettings(**search_raw)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: in 'search': {exc}") from None

    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ValueError(f"{where}: 'space' must map at least one parameter to its range.")
    params = tuple(parse_param(str(k), v, where=where) for k, v in space_raw.items())
    both = sorted(set(training) & {p.name for p in params})
    if both:
        raise ValueError(
            f"{where}: {both[0]!r} is both fixed in 'training' and searched in 'space'; keep one."
        )
    return StudySpec(
        name=name,
        path=path,
        data=data,
        model=model,
        training=training,
        search=search,
        space=Space(params),
        description=str(raw.get("description", "")),
    )
