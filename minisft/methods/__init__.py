"""Fine-tuning methods the trainer drives (see methods.base for the protocol).

REGISTRY maps the CLI name of each method to its class. A method's options are its config
dataclass (`cls.Config`, minisft.methods.config): typed fields with defaults and one-line
meanings, checked in one place when the config is made. `option_specs(name)` lists them;
`make_method(name, **options)` builds the method (an unknown option or a value of the wrong type
or range is a clear error naming it).
"""

from ..core.errors import bad_value
from .adapeft import AdaPEFT, AdaPEFTConfig, GroupSubset, GroupSubsetConfig
from .base import FullFineTune, LoRAConfig, LoRAMethod, Method
from .config import MethodConfig, OptionSpec, specs, type_name
from .gmt import GMT, GMTConfig
from .loradrop import LoRADrop, LoRADropConfig
from .mgpp import MGPP, MagnitudePruning, MagnitudePruningConfig, MGPPConfig
from .spruft import SPruFT, SPruFTConfig

REGISTRY = {"full": FullFineTune, "lora": LoRAMethod, "loradrop": LoRADrop, "spruft": SPruFT,
            "adapeft": AdaPEFT, "group_subset": GroupSubset, "gmt": GMT, "mgpp": MGPP,
            "magprune": MagnitudePruning}


def _cls(name):
    if name not in REGISTRY:
        raise bad_value("method", name, f"one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def option_specs(name):
    """[OptionSpec] of method `name`: each option's name, annotation, default and meaning, in order."""
    return specs(_cls(name).Config)


def method_options(name):
    """{option: default} accepted by method `name`."""
    return {spec.name: spec.default for spec in option_specs(name)}


def make_method(name, **options):
    """The method `name` built with `options` (its config checks them)."""
    return _cls(name)(**options)


__all__ = ["REGISTRY", "AdaPEFT", "AdaPEFTConfig", "FullFineTune", "GMT", "GMTConfig", "GroupSubset",
           "GroupSubsetConfig", "LoRAConfig", "LoRADrop", "LoRADropConfig", "LoRAMethod", "MGPP", "MGPPConfig",
           "MagnitudePruning", "MagnitudePruningConfig", "Method", "MethodConfig", "OptionSpec", "SPruFT",
           "SPruFTConfig", "make_method", "method_options", "option_specs", "type_name"]
