"""The Optuna driver: CLI (`search.run`, `search.export`), storage, workers, MLflow tracking.

Import the modules themselves (`search.driver.run_study`, `search.recipe_file.model_from_recipe`,
`search.config.build_config`): this package imports nothing at load, so `--help` and user
mistakes are answered before Keras starts.
"""
