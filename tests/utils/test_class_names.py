"""Class names: one normalisation to ``{int index: str name}`` for models, checkpoints and exports."""

from rtdet.utils.class_names import class_names


def test_a_list_is_numbered_in_order():
    assert class_names(["cat", "dog"]) == {0: "cat", 1: "dog"}
    assert class_names(("cat", 7)) == {0: "cat", 1: "7"}


def test_a_mapping_gets_int_keys_and_str_names():
    assert class_names({"0": "cat", "1": 2}) == {0: "cat", 1: "2"}  # as JSON metadata stores it


def test_no_names_gives_numbered_placeholders():
    assert class_names(None, nc=3) == {0: "class0", 1: "class1", 2: "class2"}
    assert class_names(None) == {}
