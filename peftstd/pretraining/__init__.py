"""Pretraining (recipes/pretrain.py): corpus features, model construction, language-model evaluation."""
