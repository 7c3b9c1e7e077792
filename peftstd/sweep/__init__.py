"""`peftstd sweep`: hyperparameter search with Optuna over the recipe schema's own keys."""
