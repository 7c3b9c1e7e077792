"""The standard's defences against overfitting small datasets, each a named switch in `regularization:`."""

from peftstd.regularization.section import RegularizationSection

__all__ = ["RegularizationSection"]
