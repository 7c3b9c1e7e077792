"""Pretrained models: named offline models beside hub ids and local folders."""

from peftstd.models.registry import ResolvedModel, resolve_model

__all__ = ["ResolvedModel", "resolve_model"]
