"""Data, models, regularization and the k-fold trainer. Imports neither Optuna nor MLflow."""

from trainers.data import Dataset, load_digits
from trainers.kfold import Fold, stratified_folds
from trainers.recipe import Recipe

__all__ = ["Dataset", "Fold", "Recipe", "load_digits", "stratified_folds"]
