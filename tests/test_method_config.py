"""Method options as typed dataclasses (minisft.methods.config): one check of every value against its
annotation, the configs' own range checks, construction from a config or from its arguments, and the
command line's parsing by the same annotations. Every option of every method through the command
line: tests/test_bad_inputs.py::test_every_method_option_bad_value_is_refused_by_name."""

import dataclasses
import json
import re
from typing import Literal

import numpy as np
import pytest

from minisft.core.errors import MinisftError
from minisft.methods import GMT, REGISTRY, GMTConfig, LoRAMethod, SPruFT, SPruFTConfig, make_method
from minisft.methods.config import from_text, type_name, typed
from minisft.methods.spruft import DEFAULT_RATIO


def test_values_take_their_annotations_type():
    """An int is a float, a NumPy scalar its Python value, a list a tuple; a bool is no number."""
    cases = [(8, float, 8.0), (np.float32(0.5), float, 0.5), (np.int64(3), int, 3), (True, bool, True),
             (np.bool_(False), bool, False), (["a", "b"], tuple[str, ...], ("a", "b")), (None, int | None, None),
             (5, int | float, 5), (0.5, int | float, 0.5), ("rows", Literal["rows", "neurons"], "rows")]
    for value, annotation, want in cases:
        got = typed("x", value, annotation)
        assert got == want and type(got) is type(want), (value, annotation, got)


@pytest.mark.parametrize("value,annotation", [
    (True, int), (False, float), (1.5, int), ("3", int), ("0.5", float), (None, float), (1, bool), ("yes", bool),
    ("a", tuple[str, ...]), ([1, 2], tuple[str, ...]), ((), dict), (np.ones(2), float), ("cols", Literal["rows"])])
def test_a_value_of_another_type_is_refused_naming_the_option_and_the_type(value, annotation):
    with pytest.raises(MinisftError, match=f"^opt.*expected {re.escape(type_name(annotation))}$"):
        typed("opt", value, annotation)


def test_type_names_read_as_words():
    assert type_name(float | None) == "float or none"
    assert type_name(tuple[str, ...]) == "tuple of str"
    assert type_name(Literal["a", "b"] | dict) == "one of 'a', 'b' or dict"


def test_command_line_text_is_parsed_by_the_annotation():
    cases = [("none", float | None, None), ("4", int, 4), ("4", int | float, 4), ("4", float, 4.0), ("inf", float, np.inf),
             ("Yes", bool, True), ("0", bool, False), ("a, b", tuple[str, ...], ("a", "b")),
             ("['a']", tuple[str, ...], ("a",)), ("{'x': ['y']}", dict, {"x": ["y"]}), ("rows", Literal["rows"], "rows"),
             ("none", str, "none"), (" text ", str, " text "), ("none", str | None, None), ("4", str | int, 4)]
    for text, annotation, want in cases:
        assert from_text("opt", text, annotation) == want, (text, annotation)
    for text, annotation in [("4.0", int), ("9" * 30, int), ("maybe", bool), ("cols", Literal["rows"]), ("[1", dict)]:
        expected = re.escape(type_name(annotation))
        with pytest.raises(MinisftError, match=f"^opt={re.escape(repr(text))}: expected {expected}$"):
            from_text("opt", text, annotation)


def test_a_config_is_checked_once_when_made_and_is_frozen():
    c = SPruFTConfig(rows=4, importance="magnitude")
    assert (c.ratio, c.rows, c.targets) == (None, 4, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert SPruFTConfig().ratio == DEFAULT_RATIO  # neither given: the default ratio
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rows = 0
    with pytest.raises(ValueError, match="ratio/rows"):
        SPruFTConfig(ratio=0.1, rows=4)
    with pytest.raises(ValueError, match="^drop_ratio=1.0: expected a number in"):
        GMTConfig(drop_ratio=1.0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_is_made_the_same_from_its_config_its_options_or_its_json(name):
    """Method(config), Method(**options) and Method(**json of its options()) hold equal configs."""
    method = make_method(name)
    cls = REGISTRY[name]
    options = json.loads(json.dumps(method.options(), allow_nan=False))
    assert cls(method.config).config == method.config == cls(**options).config
    assert cls(*[options[f.name] for f in dataclasses.fields(cls.Config)]).config == method.config


def test_positional_options_follow_the_configs_field_order_and_configs_are_not_mixed():
    assert GMT(0.3, "global").config == GMT(drop_ratio=0.3, scope="global").config == GMTConfig(0.3, "global")
    with pytest.raises(TypeError, match="config.*GMTConfig"):
        GMT(SPruFTConfig())
    with pytest.raises(MinisftError, match="gmt options"):
        GMT(0.3, "global", False, "extra")
    with pytest.raises(MinisftError, match=r"lora options=\['rank'\]"):
        LoRAMethod(rank=4)
    with pytest.raises(TypeError):
        SPruFT(SPruFTConfig(), ratio=0.1)
