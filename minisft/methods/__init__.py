"""Fine-tuning methods the trainer drives (see methods.base for the protocol).

REGISTRY maps the CLI name of each method to its class. Each option of a method is a constructor
parameter with a type annotation, a default and a one-line meaning (`option_specs(name)`);
`make_method(name, **options)` rejects unknown names and options, checks every value against its
annotation (so a wrong type is the same clear error for every method), then lets the constructor
check ranges. `type_name(annotation)` says a type in words, for errors and `minisft methods`.
"""

import inspect
import numbers
import types
import typing
from dataclasses import dataclass

from ..core.errors import bad_type, bad_value
from .adapeft import AdaPEFT, GroupSubset
from .base import FullFineTune, LoRAMethod, Method
from .gmt import GMT
from .loradrop import LoRADrop
from .mgpp import MGPP, MagnitudePruning
from .spruft import SPruFT

REGISTRY = {"full": FullFineTune, "lora": LoRAMethod, "loradrop": LoRADrop, "spruft": SPruFT,
            "adapeft": AdaPEFT, "group_subset": GroupSubset, "gmt": GMT, "mgpp": MGPP,
            "magprune": MagnitudePruning}


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its name, type annotation, default and one-line meaning."""

    name: str
    annotation: object
    default: object
    help: str


def _cls(name):
    if name not in REGISTRY:
        raise bad_value("method", name, f"one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def option_specs(name):
    """[OptionSpec] of method `name`, in constructor order (annotation None / help "" where missing:
    the metadata test fails on those)."""
    cls = _cls(name)
    hints = typing.get_type_hints(cls.__init__)
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [OptionSpec(p.name, hints.get(p.name), p.default, cls.option_help.get(p.name, "")) for p in params]


def method_options(name):
    """{option: default} accepted by method `name`."""
    return {spec.name: spec.default for spec in option_specs(name)}


def _members(annotation):
    """The alternatives of a union annotation (`int | None` -> (int, NoneType)), else (annotation,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def type_name(annotation):
    """An annotation in words: "int", "float or none", "tuple of str", ..."""
    words = []
    for t in _members(annotation):
        if t is type(None):
            words.append("none")
        elif typing.get_origin(t) is tuple:
            words.append(f"tuple of {type_name(typing.get_args(t)[0])}")
        elif typing.get_origin(t) is dict or t is dict:
            words.append("dict")
        else:
            words.append(getattr(t, "__name__", str(t)))
    return " or ".join(words)


def _is_instance(value, annotation):
    """Whether `value` has type `annotation` (an int is a float; a bool is not a number; a tuple
    annotation accepts a list or tuple of its element type)."""
    for t in _members(annotation):
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
        if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):
            if all(_is_instance(v, typing.get_args(t)[0]) for v in value):
                return True
        if (t is dict or typing.get_origin(t) is dict) and isinstance(value, dict):
            return True
    return False


def _takes_more(cls):
    """Whether the constructor takes **kwargs (a method that refuses renamed options with its own
    message, saying what changed)."""
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def check_option_types(name, options):
    """Raise a clear error for an unknown option or a value whose type its annotation excludes (an
    option without an annotation is left to the constructor: the metadata test requires one)."""
    specs = {spec.name: spec for spec in option_specs(name)}
    unknown = sorted(set(options) - set(specs))
    if unknown and not _takes_more(_cls(name)):
        raise bad_value(f"{name} options", unknown, f"options among {sorted(specs)}")
    for key, value in options.items():
        spec = specs.get(key)
        if spec is not None and spec.annotation is not None and not _is_instance(value, spec.annotation):
            raise bad_type(key, value, type_name(spec.annotation))


def make_method(name, **options):
    """The method `name` built with `options`, each checked against its annotation, then by the
    constructor."""
    check_option_types(name, options)
    return _cls(name)(**options)


__all__ = ["REGISTRY", "AdaPEFT", "FullFineTune", "GMT", "GroupSubset", "MGPP", "LoRADrop", "LoRAMethod",
           "MagnitudePruning", "Method", "OptionSpec", "SPruFT", "check_option_types", "make_method", "method_options",
           "option_specs", "type_name"]
