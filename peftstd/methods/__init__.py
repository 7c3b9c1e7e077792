"""Fine-tuning methods, looked up by the `method` name of a recipe.

Every module of this package is imported here, so a method registers itself (`@register`) by existing.
"""

import importlib
import pkgutil

from peftstd.methods.base import METHODS, Method, Wrapping, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
for _name in sorted(METHODS):  # by name, whatever order the modules imported each other in (schema, docs, errors)
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["METHODS", "Method", "Wrapping", "get_method", "register"]


def get_method(name: str) -> Method:
    """A fresh instance of the method registered under `name`."""
    return METHODS[name]()
