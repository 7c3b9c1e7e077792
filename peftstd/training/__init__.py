"""Building blocks of the training recipes: precision, batching, optimisation, evaluation, selection."""
