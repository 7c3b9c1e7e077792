"""The recipe standard: schema, loading, overrides and the generated docs.

Names are resolved lazily: method modules import `peftstd.basics.section`, and the schema
imports the method modules, so this package must not import the schema on its own import.
"""

from importlib import import_module

_EXPORTS = {
    "SCHEMA_VERSION": "peftstd.config.schema",
    "RecipeConfig": "peftstd.config.schema",
    "load_config": "peftstd.config.load",
    "to_yaml": "peftstd.config.load",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peftstd.config' has no attribute {name!r}")
