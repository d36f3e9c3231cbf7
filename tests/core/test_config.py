from __future__ import annotations

import json

import pytest

from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import ConfigVersionError, UserInputError


def test_json_round_trip_and_hashable():
    cfg = QuantConfig(
        default=LayerQuantConfig(WeightQuant(bits=4, granularity="per_tensor", method="percentile", percentile=99.9),
                                 ActQuant(bits=6, symmetric=True, method="entropy", clip_ratio=0.9)),
        overrides=(("re:classifier\\..*", None), ("features.0", LayerQuantConfig(activation=None))),
        procedure=CalibrationProcedure(max_samples=64, bias_correction=True),
    )
    again = QuantConfig.from_json(cfg.to_json())
    assert again == cfg
    assert hash(again) == hash(cfg)


def test_override_resolution_exact_beats_pattern_and_later_pattern_wins():
    w4 = LayerQuantConfig(WeightQuant(bits=4))
    w6 = LayerQuantConfig(WeightQuant(bits=6))
    cfg = QuantConfig(overrides=(("layer.1", w6), ("re:layer\\..*", w4), ("re:layer\\.2", None)))
    assert cfg.for_layer("layer.1") == w6
    assert cfg.for_layer("layer.3") == w4
    assert cfg.for_layer("layer.2") is None
    assert cfg.for_layer("other") == LayerQuantConfig()


@pytest.mark.parametrize(
    "make",
    [
        lambda: WeightQuant(bits=9),
        lambda: WeightQuant(bits=1),
        lambda: WeightQuant(granularity="per_row"),
        lambda: ActQuant(method="magic"),
        lambda: ActQuant(method="percentile"),
        lambda: ActQuant(clip_ratio=1.5),
        lambda: QuantConfig(overrides=(("re:(", None),)),
    ],
)
def test_invalid_values_raise_user_errors(make):
    with pytest.raises(UserInputError):
        make()


def test_newer_version_and_unknown_fields_are_refused():
    data = QuantConfig().to_dict()
    with pytest.raises(ConfigVersionError, match="upgrade"):
        QuantConfig.from_dict({**data, "version": 99})
    with pytest.raises(ConfigVersionError, match="Unknown field"):
        QuantConfig.from_dict({**data, "surprise": 1})
    data["default"]["weight"]["colour"] = "red"
    with pytest.raises(ConfigVersionError, match="colour"):
        QuantConfig.from_dict(data)
    with pytest.raises(UserInputError):
        QuantConfig.from_json("{not json")
    with pytest.raises(UserInputError):
        QuantConfig.from_json(json.dumps([1, 2]))
