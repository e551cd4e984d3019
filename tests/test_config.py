import dataclasses

import pytest

from leanformer.config import BaseConfig


@dataclasses.dataclass(frozen=True)
class _DemoConfig(BaseConfig):
    bits: int = 4
    name: str = "x"

    def _validate(self):
        if self.bits not in (4, 8):
            self._fail("bits", self.bits, "must be 4 or 8")


def test_round_trip_json():
    cfg = _DemoConfig(bits=8, name="y")
    assert _DemoConfig.from_json(cfg.to_json()) == cfg


def test_bad_field_is_named():
    with pytest.raises(ValueError, match="bits=3"):
        _DemoConfig(bits=3)


def test_unknown_field_and_wrong_type_rejected():
    with pytest.raises(ValueError, match="unknown"):
        _DemoConfig.from_dict({"bits": 4, "nope": 1})
    with pytest.raises(ValueError, match="mismatch"):
        _DemoConfig.from_dict({"type": "Other", "bits": 4})


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _DemoConfig().bits = 8
