"""Fine-tuning methods the trainer drives (see methods.base for the protocol).

REGISTRY maps the CLI name of each method to its class; `make_method(name, **options)` builds one
and rejects unknown names or options with an error that lists the valid ones.
"""

import inspect

from ..errors import bad_value
from .adapeft import AdaPEFT, GroupSubset
from .base import FullFineTune, LoRAMethod, Method
from .gmt import GMT
from .loradrop import LoRADrop
from .mgpp import MGPP
from .spruft import SPruFT

REGISTRY = {"full": FullFineTune, "lora": LoRAMethod, "loradrop": LoRADrop, "spruft": SPruFT,
            "adapeft": AdaPEFT, "group_subset": GroupSubset, "gmt": GMT, "mgpp": MGPP}


def method_options(name):
    """{option: default} accepted by method `name`."""
    cls = _cls(name)
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def _cls(name):
    if name not in REGISTRY:
        raise bad_value("method", name, f"one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def make_method(name, **options):
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise bad_value(f"{name} options", unknown, f"options among {sorted(valid)}")
    return _cls(name)(**options)


__all__ = ["REGISTRY", "AdaPEFT", "FullFineTune", "GMT", "GroupSubset", "MGPP", "LoRADrop", "LoRAMethod", "Method", "SPruFT", "make_method", "method_options"]
