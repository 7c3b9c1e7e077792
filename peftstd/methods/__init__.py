"""Fine-tuning methods, looked up by the `method` name of a recipe."""

from peftstd.methods.adalora import AdaLora
from peftstd.methods.adapter import BottleneckAdapter
from peftstd.methods.base import Method
from peftstd.methods.full import FullFineTuning
from peftstd.methods.lora import Lora

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (FullFineTuning, Lora, AdaLora, BottleneckAdapter)}


def get_method(name: str) -> Method:
    """A fresh instance of the method registered under `name`."""
    return METHODS[name]()
