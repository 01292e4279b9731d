"""crate_cli.records.Record: what crate used typing.NamedTuple for, cheaper."""

from __future__ import annotations

import copy
import pickle

import pytest

from crate_cli.records import Record


class Point(Record):
    x: int
    y: int
    label: str = ""


def test_fields_by_position_and_by_name_with_defaults() -> None:
    p = Point(1, 2)
    assert (p.x, p.y, p.label) == (1, 2, "")
    assert p == (1, 2, "") and hash(p) == hash((1, 2, ""))
    assert Point(1, y=2, label="a") == Point(1, 2, "a") == (1, 2, "a")
    x, y, label = Point(3, 4, "b")
    assert (x, y, label) == (3, 4, "b")
    assert Point._fields == ("x", "y", "label")
    assert repr(Point(1, 2)) == "Point(x=1, y=2, label='')"


def test_wrong_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="needs the field 'y'"):
        Point(1)
    with pytest.raises(TypeError, match="takes 3 fields, not 4"):
        Point(1, 2, "a", "extra")
    with pytest.raises(TypeError, match="has no field 'z'"):
        Point(1, 2, z=3)
    with pytest.raises(TypeError, match="takes 3 fields, not 2"):
        Point._make((1, 2))
    with pytest.raises(ValueError, match="has no field 'z'"):
        Point(1, 2)._replace(z=3)


def test_immutable_and_derived() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.extra = 5  # type: ignore[attr-defined]  # no instance dictionary
    assert not hasattr(p, "__dict__")
    match p:
        case Point(x, y):
            assert (x, y) == (1, 2)
    assert p._replace(y=7) == Point(1, 7)
    assert p == Point(1, 2)  # unchanged
    assert Point._make([5, 6, "c"]) == Point(5, 6, "c")
    assert p._asdict() == {"x": 1, "y": 2, "label": ""}


def test_copies_and_pickles_as_itself() -> None:
    p = Point(1, 2, "a")
    for again in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert again == p
        assert type(again) is Point


def test_string_annotations_make_the_same_fields() -> None:
    # This module has `from __future__ import annotations`: fields still come
    # from the annotations' names, in order.
    assert Point.__annotations__ == {"x": "int", "y": "int", "label": "str"}
    assert Point._fields == ("x", "y", "label")
