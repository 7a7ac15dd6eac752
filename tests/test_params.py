"""Tests of the typed-hyperparameter base (musicsim.params)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from musicsim.params import ParamsConfig, ParamsError, check_params, fill_defaults, settle_params


@dataclass(frozen=True)
class Units(ParamsConfig):
    units: int = 8
    dropout: float = 0.0

    def __post_init__(self):
        if self.units < 1:
            raise ParamsError(f"units must be >= 1, got {self.units}")


@dataclass(frozen=True)
class Rate(ParamsConfig):
    rate: float = 0.5
    dropout: float = 0.0


def test_from_params_reads_its_own_keys_and_ignores_the_others():
    assert Units.from_params({"units": 3, "dropout": 0.1, "rate": 9}) == Units(units=3, dropout=0.1)
    assert Units(units=3).to_params() == {"units": 3, "dropout": 0.0}


def test_from_params_names_every_missing_key():
    with pytest.raises(ParamsError, match=r"Units needs params \['units', 'dropout'\]"):
        Units.from_params({"rate": 1.0})


def test_settle_fills_defaults_keeps_given_values_and_refuses_unknown_keys():
    assert settle_params({"units": 2}, configs=[Units, Rate]) == {"units": 2, "dropout": 0.0, "rate": 0.5}
    with pytest.raises(ParamsError, match=r"unknown params \['unit'\]"):
        settle_params({"unit": 2}, configs=[Units, Rate])


def test_check_params_refuses_a_missing_key_and_a_bad_value():
    with pytest.raises(ParamsError, match=r"Rate needs params \['rate'\]"):
        check_params({"units": 2, "dropout": 0.0}, configs=[Units, Rate])
    with pytest.raises(ParamsError, match="units must be >= 1"):
        check_params({"units": 0, "dropout": 0.0, "rate": 0.5}, configs=[Units, Rate])


def test_a_shared_key_needs_one_default():
    @dataclass(frozen=True)
    class OtherDropout(ParamsConfig):
        dropout: float = 0.2

    with pytest.raises(ParamsError, match="'dropout' has two defaults"):
        fill_defaults({}, configs=[Units, OtherDropout])
