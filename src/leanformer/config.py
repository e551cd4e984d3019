"""Base class for every leanformer config: a frozen, validated, versioned dataclass.

Modelled on torchao's ``AOBaseConfig``: subclasses are ``@dataclass(frozen=True)``, check their fields in
``_validate`` (raise ``ValueError`` naming the field), and round-trip through plain dicts / JSON.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="BaseConfig")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Subclass with ``@dataclass(frozen=True)`` and override ``_validate``."""

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - default has nothing to check
        pass

    @staticmethod
    def _fail(field: str, value: Any, why: str) -> None:
        raise ValueError(f"invalid {field}={value!r}: {why}")

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {"type": type(self).__name__, "version": self.VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, BaseConfig) else value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        data = dict(data)
        kind = data.pop("type", cls.__name__)
        version = data.pop("version", cls.VERSION)
        if kind != cls.__name__:
            raise ValueError(f"config type mismatch: expected {cls.__name__}, got {kind}")
        if version > cls.VERSION:
            raise ValueError(f"{cls.__name__} version {version} is newer than this leanformer understands ({cls.VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))
