"""The recipe standard: schema, loading, overrides and the generated docs."""

from peftstd.config.load import load_config, to_yaml
from peftstd.config.schema import SCHEMA_VERSION, RecipeConfig

__all__ = ["SCHEMA_VERSION", "RecipeConfig", "load_config", "to_yaml"]
