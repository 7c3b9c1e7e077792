"""Data: named sample datasets, local files, hub datasets, deterministic splits."""

from peftstd.data.examples import Example, Splits
from peftstd.data.sources import load_splits

__all__ = ["Example", "Splits", "load_splits"]
