"""Declarative search spaces: one YAML file per study, checked into typed objects."""

from spaces.checks import check_choice, check_float, check_int, check_keys
from spaces.load import (
    PRUNERS,
    SAMPLERS,
    SearchSettings,
    StudySpec,
    builtin_studies,
    load_study,
    resolve_study,
)
from spaces.space import FloatParam, IntParam, Space
from spaces.suggest import (
    default_params,
    sample_params,
    to_keras_tuner,
    values_from_keras_tuner,
    values_from_params,
)

__all__ = [
    "PRUNERS", "SAMPLERS", "FloatParam", "IntParam", "SearchSettings", "Space", "StudySpec",
    "builtin_studies", "check_choice", "check_float", "check_int", "check_keys", "default_params",
    "load_study", "resolve_study", "sample_params", "to_keras_tuner", "values_from_keras_tuner",
    "values_from_params",
]
