"""Typed hyperparameters: each component owns a frozen dataclass of its keys and their defaults.

The estimator's ``params`` stays one flat dict (what ``run.json`` records, what export and search
read); a component reads its own keys from it with ``Config.from_params(params)``, which raises
when one of them is missing: a run settles its params once (:func:`settle_params`, every default
filled, unknown keys refused) before training, so no component falls back on a default of its own.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ToyConfig(ParamsConfig):
...     units: int = 8
>>> ToyConfig.from_params({"units": 4, "other": 1})
ToyConfig(units=4)
>>> settle_params({"units": 2}, configs=[ToyConfig])
{'units': 2}
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, TypeVar

ConfigT = TypeVar("ConfigT", bound="ParamsConfig")
# One --dropout flag for the WaveNet and the LSTM: their fields share the key, its default and this help.
DROPOUT_HELP = "Dropout rate (WaveNet: before each dense layer; LSTM: on its outputs)."


class ParamsError(ValueError):
    """A params dict that misses a component's key, holds a key no component knows, or a bad value."""


class ParamsConfig:
    """Base of a component's config: subclasses are ``@dataclass(frozen=True)`` whose field names are
    the component's keys in the flat params dict and whose defaults are the component's defaults.

    Subclasses check their values in ``__post_init__`` (raising :class:`ParamsError`).
    """

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The component's keys, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_params(cls: type[ConfigT], params: Mapping) -> ConfigT:
        """The component's config read from a flat params dict; other components' keys are ignored.

        Raises
        ------
        ParamsError
            Naming every key of this component that ``params`` lacks.
        """
        missing = [key for key in cls.keys() if key not in params]
        if missing:
            raise ParamsError(f"{cls.__name__} needs params {missing} (missing): settle the params first "
                              "(musicsim.params.settle_params fills every component's defaults)")
        return cls(**{key: params[key] for key in cls.keys()})

    def to_params(self) -> dict:
        """The config as flat params: ``{key: value}``."""
        return {key: getattr(self, key) for key in self.keys()}


def known_keys(configs: Iterable[type[ParamsConfig]]) -> set[str]:
    """Every key of ``configs``."""
    return {key for config in configs for key in config.keys()}


def fill_defaults(params: Mapping, *, configs: Iterable[type[ParamsConfig]]) -> dict:
    """``params`` with the default of every key of ``configs`` it lacks (given values win).

    Two configs may share a key (e.g. ``dropout``) only with the same default.
    """
    defaults: dict = {}
    for config in configs:
        for key, value in config().to_params().items():
            if key in defaults and defaults[key] != value:
                raise ParamsError(f"params key {key!r} has two defaults: {defaults[key]!r} and {value!r} "
                                  f"({config.__name__})")
            defaults[key] = value
    return {**defaults, **params}


def check_params(params: Mapping, *, configs: Iterable[type[ParamsConfig]]) -> None:
    """Raise :class:`ParamsError` when ``params`` holds a key none of ``configs`` knows, lacks one of
    their keys, or holds a value a config refuses."""
    configs = list(configs)
    unknown = sorted(set(params) - known_keys(configs))
    if unknown:
        raise ParamsError(f"unknown params {unknown}: no component ({', '.join(c.__name__ for c in configs)}) "
                          "has these keys")
    for config in configs:
        config.from_params(params)


def settle_params(params: Mapping, *, configs: Iterable[type[ParamsConfig]]) -> dict:
    """A run's complete params: every default of ``configs`` filled, then checked (:func:`check_params`)."""
    configs = list(configs)
    settled = fill_defaults(params, configs=configs)
    check_params(settled, configs=configs)
    return settled


def hyperparameter(default, help: str, *, choices: Iterable | None = None, bounds: str | None = None,
                   flag: bool = True, **flag_settings):
    """A config field: its default, its help text and what its flag accepts, written once.

    Parameters
    ----------
    default : the default value (immutable: a tuple for a list)
    help : the flag's help text
    choices : the values an enum flag accepts
    bounds : the range of a numeric flag, by name: ``"positive"``, ``"non_negative"``,
        ``"at_least_one"``, ``"fraction"``, ``"open_fraction"`` ([0, 1)), ``"ratio"`` ((0, 1]),
        ``"any"``, ``"seed"``, ``"sizes"`` (a list of whole numbers >= 1)
    flag : False for a key the run sets itself (no flag)
    flag_settings : ``item`` (a list's item type), ``off`` (the flag value meaning None/False),
        ``name`` (the flag's name when it is not the field's)
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "bounds": bounds,
                "flag": flag, **flag_settings}
    return dataclasses.field(default=default, metadata=metadata)
