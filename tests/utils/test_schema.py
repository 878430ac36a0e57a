"""Setting: the one checker of every setting value (types, ranges, choices, strict booleans, unions)."""

import math

import pytest

from rtdet.utils.schema import Setting, SettingError, parse_range


def test_numbers_ranges_and_conversion():
    lr = Setting("lr0", 0.01, float, "base learning rate", low=0.0, low_open=True)
    assert lr.check(1) == 1.0 and isinstance(lr.check(1), float)
    for bad in (0, -1, "abc", float("nan"), float("inf"), True, None, [1]):
        with pytest.raises(SettingError, match=r"^lr0=.*: expected a number > 0 -- base learning rate$"):
            lr.check(bad)
    n = Setting("epochs", 10, int, "passes", low=1)
    assert n.check(3.0) == 3 and isinstance(n.check(3.0), int)
    with pytest.raises(SettingError, match="an integer >= 1"):
        n.check(2.5)


def test_booleans_are_strict():
    st = Setting("exist_ok", False, bool, "reuse the folder")
    assert st.check(True) is True and st.check(False) is False
    for bad in ("maybe", "true", 1, 0, None, "", "yes"):
        with pytest.raises(SettingError, match="expected true or false"):
            st.check(bad)


def test_choices_are_case_insensitive_and_return_the_declared_spelling():
    st = Setting("optimizer", "AdamW", str, "optimizer", choices=("AdamW", "SGD"))
    assert st.check("sgd") == "SGD"
    with pytest.raises(SettingError, match="optimizer='Foo': expected one of AdamW, SGD"):
        st.check("Foo")


def test_nullable_and_empty():
    st = Setting("conf", None, float, "threshold", low=0, high=1, nullable=True)
    assert st.check(None) is None and st.check("") is None and st.check(" ") is None
    with pytest.raises(SettingError, match=r"expected a number >= 0 and <= 1, or empty"):
        st.check(2)
    with pytest.raises(SettingError, match="epochs=''"):
        Setting("epochs", 1, int, "passes").check(None)


def test_union_kinds_take_the_first_that_fits():
    st = Setting("resume", False, (bool, str), "resume", label="true or false, or a path")
    assert st.check(True) is True and st.check("runs/last.pt") == "runs/last.pt"
    with pytest.raises(SettingError, match="expected true or false, or a path"):
        st.check([1, 2])


def test_validate_normalises_or_says_why():
    def even(v: int) -> int:
        if v % 2:
            raise ValueError("must be even")
        return v // 2

    st = Setting("k", 2, int, "doc", validate=even)
    assert st.check(4) == 2
    with pytest.raises(SettingError, match="^k=3: must be even$"):
        st.check(3)


@pytest.mark.parametrize(("text", "expected"), [
    ("[0, 1]", {"low": 0.0, "high": 1.0, "low_open": False, "high_open": False}),
    ("(0, 1]", {"low": 0.0, "high": 1.0, "low_open": True, "high_open": False}),
    ("[1, inf)", {"low": 1.0, "high": None, "low_open": False, "high_open": False}),
    ("(-inf, 0)", {"low": None, "high": 0.0, "low_open": False, "high_open": True}),
])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["0..1", "[1, 0]", "[a, 1]", "1", "[0 1]"])
def test_parse_range_refuses_what_is_not_an_interval(text):
    with pytest.raises(ValueError, match="range"):
        parse_range(text)


def test_from_mapping_reads_a_schema_block():
    types = {"float": {"kind": float}, "bool": {"kind": bool}, "path": {"kind": str, "label": "a path"}}
    st = Setting.from_mapping("lr0", {"default": 0.01, "type": "float", "range": "(0, 10]", "doc": "lr"}, types, "f")
    assert (st.low, st.high, st.low_open, st.nullable) == (0.0, 10.0, True, False)
    st = Setting.from_mapping("resume", {"default": False, "type": ["bool", "path"], "doc": "r"}, types, "f")
    assert st.kind == (bool, str) and st.allowed() == "true or false, or a path"
    st = Setting.from_mapping("data", {"default": None, "type": "path", "doc": "d"}, types, "f")
    assert st.nullable and st.check(None) is None
    with pytest.raises(SettingError, match="'range' applies to numbers only"):
        Setting.from_mapping("x", {"default": True, "type": "bool", "range": "[0, 1]", "doc": "d"}, types, "f")
    with pytest.raises(SettingError, match="f: the default of 'x' does not fit"):
        Setting.from_mapping("x", {"default": math.inf, "type": "float", "doc": "d"}, types, "f")


def test_verbs_give_an_empty_setting_a_default_per_verb():
    types = {"float": {"kind": float}}
    block = {"default": None, "type": "float", "range": "[0, 1]", "doc": "c", "verbs": {"val": 0.001, "predict": 0.25}}
    st = Setting.from_mapping("conf", block, types, "f")
    assert (st.verb_default("val"), st.verb_default("predict"), st.verb_default("train")) == (0.001, 0.25, None)
    with pytest.raises(SettingError, match="f: the val default of 'conf' does not fit"):
        Setting.from_mapping("conf", {**block, "verbs": {"val": 2.0}}, types, "f")
    with pytest.raises(SettingError, match="'verbs' applies to a key whose default is empty"):
        Setting.from_mapping("conf", {**block, "default": 0.5}, types, "f")
    with pytest.raises(SettingError, match="'verbs' must be a mapping"):
        Setting.from_mapping("conf", {**block, "verbs": [0.1]}, types, "f")
