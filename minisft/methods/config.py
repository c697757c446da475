"""A method's options as one typed dataclass, the way HF PEFT's `LoraConfig` carries them.

Each method has a frozen `MethodConfig` subclass (`SPruFTConfig`, `GMTConfig`, ...): every field
is an option, with a type annotation, a default and a one-line meaning (`option(default, help)`).
Making a config checks it, in one place (`MethodConfig.__post_init__`):
  1. every value against its annotation (`typed`): int, float, bool, str, dict, Literal choices,
     tuple[X, ...], and unions of these with None. An int is a float (8 -> 8.0), a bool is not a
     number, a list is a tuple, a NumPy scalar is its Python value;
  2. then the config's own `check()`: ranges, and rules between options (SPruFT's ratio or rows).
A bad value is a MinisftError naming the option, the value and what was expected.

The command line parses `--set OPTION=VALUE` text by the same annotations (`from_text`: never
evaluated), and `minisft methods` prints them (`specs`, `type_name`).
"""

import ast
import dataclasses
import numbers
import re
import types
import typing

import numpy as np

from ..core.errors import bad_type, bad_value

INT64_MAX = 2**63 - 1  # the largest integer `from_text` reads (a larger one is no usable count)
_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def option(default, help):
    """A config field: its default and its one-line meaning (shown by `minisft methods`)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its name, type annotation, default and one-line meaning."""

    name: str
    annotation: object
    default: object
    help: str


def specs(config_class):
    """[OptionSpec] of a MethodConfig subclass, in field order."""
    hints = typing.get_type_hints(config_class)
    return [OptionSpec(f.name, hints[f.name], f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(config_class)]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's options (module docstring); a method without options uses it as is."""

    def __post_init__(self):
        for spec in specs(type(self)):
            self._set(spec.name, typed(spec.name, getattr(self, spec.name), spec.annotation))
        self.check()

    def check(self):
        """The method's range checks and rules between options (after every value has its type)."""

    def _set(self, name, value):
        """Replace an option by its checked form (a frozen config changes only while it is made)."""
        object.__setattr__(self, name, value)

    def to_dict(self):
        """{option: value}, JSON-ready (tuples as lists), for logs and checkpoint compatibility."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


# ------------------------------------------------------------------------------ annotations
def members(annotation):
    """The alternatives of a union (`int | None` -> (int, NoneType)), else (annotation,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def type_name(annotation):
    """An annotation in words: "int", "float or none", "tuple of str", "one of 'rows', 'neurons'"."""
    words = []
    for t in members(annotation):
        if t is type(None):
            words.append("none")
        elif typing.get_origin(t) is typing.Literal:
            words.append("one of " + ", ".join(map(repr, typing.get_args(t))))
        elif typing.get_origin(t) is tuple:
            words.append(f"tuple of {type_name(typing.get_args(t)[0])}")
        else:
            words.append(t.__name__)
    return " or ".join(words)


def _as(value, t):
    """(True, `value` as the plain type `t`) or (False, None)."""
    if t is type(None):
        return value is None, None
    if isinstance(value, (bool, np.bool_)):  # a bool is no number
        return t is bool, bool(value)
    if t is bool:
        return False, None
    if t is int and isinstance(value, numbers.Integral):
        return True, int(value)
    if t is float and isinstance(value, numbers.Real):
        return True, float(value)
    if t is str or t is dict:
        return isinstance(value, t), value
    if typing.get_origin(t) is typing.Literal:
        return isinstance(value, str) and value in typing.get_args(t), value
    if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):
        items = [_as(v, typing.get_args(t)[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    return False, None


def typed(name, value, annotation):
    """`value` as a value of `annotation` (module docstring), or an error naming option `name`."""
    for t in members(annotation):
        ok, v = _as(value, t)
        if ok:
            return v
    choices = any(typing.get_origin(t) is typing.Literal for t in members(annotation))
    raise (bad_value if choices and isinstance(value, str) else bad_type)(name, value, type_name(annotation))


def _from_text_one(text, t):
    """`text` as a value of the plain type `t` (ValueError, SyntaxError or TypeError if it is not one)."""
    word = text.strip()
    if t is type(None) and word.lower() in _NONE:
        return None
    if t is bool and word.lower() in _TRUE + _FALSE:
        return word.lower() in _TRUE
    if t is int and re.fullmatch(r"[+-]?\d+", word) and abs(int(word)) <= INT64_MAX:
        return int(word)
    if t is float:
        return float(word)  # nan and inf parse; the config's check refuses them where they are invalid
    if t is str or (typing.get_origin(t) is typing.Literal and word in typing.get_args(t)):
        return text if t is str else word
    if typing.get_origin(t) is tuple:
        items = ast.literal_eval(word) if word[:1] in "([" else [w.strip() for w in word.split(",") if w.strip()]
        if isinstance(items, (list, tuple)):
            element = typing.get_args(t)[0]
            return tuple(from_text("", item, element) if isinstance(item, str) else item for item in items)
    if t is dict:
        value = ast.literal_eval(word)  # a literal, never evaluated code
        if isinstance(value, dict):
            return value
    raise ValueError(text)


def from_text(name, text, annotation):
    """Command-line `text` as a value of `annotation`: none/null, true/false (yes/no, on/off, 1/0),
    integers, floats (nan, inf), tuples as "a,b" or "('a', 'b')", dicts as literals; str is tried
    last, as it takes any text. Never evaluated. An error names option `name` and the type."""
    for t in sorted(members(annotation), key=lambda t: t is str):
        try:
            return _from_text_one(text, t)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise bad_value(name, text, type_name(annotation))
