"""Records: small immutable tuples with named fields, cheap to define.

`Record` gives what crate used `typing.NamedTuple` for (fields by name and
by position, defaults, `_make`, `_replace`, `_asdict`, equality and hashing
as tuples, immutability) at a fraction of its cost: a NamedTuple class
compiles its constructor with `eval` when it is defined, about 0.2 ms each,
and `crate run` loads some fifty record classes on its way to the command.
A Record subclass only sets one property per field. mypy checks records as
dataclasses (`dataclass_transform`): the constructor's arguments by name,
type and default, and each field's type.

    class HeadRow(Record):
        name: str
        version: int
        tags: str = "[]"
"""

from operator import itemgetter
from typing import Any, ClassVar, Self, dataclass_transform


class _RecordType(type):
    """Gives every record class empty `__slots__`, as NamedTuple does: no
    instance dictionary, so a field cannot be shadowed nor an attribute added."""

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kw: Any
    ) -> "_RecordType":
        namespace.setdefault("__slots__", ())
        return super().__new__(mcs, name, bases, namespace, **kw)


@dataclass_transform(frozen_default=True)
class Record(tuple[Any, ...], metaclass=_RecordType):
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls) -> None:
        # Only the names and order of the annotations matter here (they may be
        # strings under `from __future__ import annotations`); inspect, which
        # would read them for us, costs more to import than all records.
        names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        cls._defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        cls._fields = names
        setattr(cls, "__match_args__", names)  # noqa: B010 - mypy sees no such class attribute
        for i, name in enumerate(names):
            setattr(cls, name, property(itemgetter(i), doc=f"field {i}: {name}"))

    def __new__(cls, *values: Any, **named: Any) -> Self:
        if named or len(values) != len(cls._fields):
            values = cls._fill(values, named)
        return tuple.__new__(cls, values)

    @classmethod
    def _fill(cls, values: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
        if len(values) > len(cls._fields):
            raise TypeError(f"{cls.__name__} takes {len(cls._fields)} fields, not {len(values)}")
        out = list(values)
        for name in cls._fields[len(values) :]:
            if name in named:
                out.append(named.pop(name))
            elif name in cls._defaults:
                out.append(cls._defaults[name])
            else:
                raise TypeError(f"{cls.__name__} needs the field {name!r}")
        if named:
            raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, named))}")
        return tuple(out)

    @classmethod
    def _make(cls, values: Any) -> Self:
        """A record of `values`, in field order (a row as storage returns it)."""
        made = tuple.__new__(cls, values)
        if len(made) != len(cls._fields):
            raise TypeError(f"{cls.__name__} takes {len(cls._fields)} fields, not {len(made)}")
        return made

    def _replace(self, **changes: Any) -> Self:
        values = [changes.pop(n, v) for n, v in zip(self._fields, self, strict=True)]
        made = tuple.__new__(type(self), values)
        if changes:  # ValueError, as NamedTuple's _replace
            raise ValueError(f"{type(self).__name__} has no field {', '.join(map(repr, changes))}")
        return made

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle call __new__ with these
        return tuple(self)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({shown})"
