"""Random audio augmentations of a crop (contrastive pretraining's two views of a track).

Shift, equaliser, gain and noise, each off when its setting is None; one seeded
``numpy.random.Generator`` is the only source of randomness, so a seed gives the same crops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.signal

from musicsim.params import hyperparameter


def _range(value, name: str) -> tuple[float, float] | None:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)):  # a lone number would be ambiguous: 0 dB, or off?
        raise ValueError(f"Augmentation.{name} must be None, empty or a (low, high) pair, got {value!r}")
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not values[0] <= values[1] or not all(math.isfinite(v) for v in values):
        raise ValueError(f"Augmentation.{name} must be None or a finite (low, high) with low <= high, got {value!r}")
    return values


@dataclass(frozen=True)
class Augmentation:
    """Random audio augmentations of a crop; each is off when its setting is None (or 0 / an empty range).

    Attributes
    ----------
    gain_db : (low, high) dB; the crop is scaled by ``10 ** (g / 20)``, ``g`` uniform in the range
    eq_db : largest band gain in dB; 2 or 3 bands (random) get gains uniform in ``[-eq_db, eq_db]``,
        applied by a linear-phase FIR of ``eq_taps`` taps (``scipy.signal.firwin2``, zero delay)
    eq_taps : odd FIR length (33 by default: cheap, coarse bands are all an EQ needs)
    noise_snr_db : (low, high) dB; white Gaussian noise at an SNR uniform in the range, relative to
        the crop's mean power (a silent crop gets no noise)
    max_shift_seconds : the crop's content moves by up to this much, either way; steps moved in are 0
    """

    gain_db: tuple[float, float] | None = hyperparameter(
        (-6.0, 6.0), "contrastive (and --distill_augment): random gain range in dB (empty: off).", name="augment_gain_db",
        item=float, empty_off=True, bounds="any")
    eq_db: float | None = hyperparameter(6.0, "contrastive (and --distill_augment): random equaliser band gains up to "
                                         "this many dB (0: off).", name="augment_eq_db", bounds="non_negative")
    eq_taps: int = 33
    noise_snr_db: tuple[float, float] | None = hyperparameter(
        (20.0, 40.0), "contrastive (and --distill_augment): additive noise SNR range in dB (empty: off).",
        name="augment_snr_db", item=float, empty_off=True, bounds="any")
    max_shift_seconds: float | None = hyperparameter(0.05, "contrastive (and --distill_augment): random time shift "
                                                     "up to this (0: off).", name="augment_shift_seconds",
                                                     bounds="non_negative")

    def __post_init__(self):
        object.__setattr__(self, "gain_db", _range(self.gain_db, "gain_db"))
        object.__setattr__(self, "noise_snr_db", _range(self.noise_snr_db, "noise_snr_db"))
        for name in ("eq_db", "max_shift_seconds"):
            value = getattr(self, name)
            if value is not None:
                if not math.isfinite(float(value)) or float(value) < 0:
                    raise ValueError(f"Augmentation.{name} must be None or a finite value >= 0, got {value!r}")
                object.__setattr__(self, name, float(value) or None)
        if int(self.eq_taps) < 3 or int(self.eq_taps) % 2 == 0:
            raise ValueError(f"Augmentation.eq_taps must be an odd number >= 3, got {self.eq_taps!r}")

    @classmethod
    def none(cls) -> "Augmentation":
        """Every augmentation off: :func:`augment` returns its input unchanged."""
        return cls(gain_db=None, eq_db=None, noise_snr_db=None, max_shift_seconds=None)

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the augmentations that are on, in the order they are applied."""
        on = dict(shift=self.max_shift_seconds, eq=self.eq_db, gain=self.gain_db, noise=self.noise_snr_db)
        return tuple(name for name, setting in on.items() if setting)


def shift(audio: np.ndarray, steps: int) -> np.ndarray:
    """Move ``audio`` ``[T, C]`` by ``steps`` (later if positive, earlier if negative); steps moved in are 0."""
    time = audio.shape[0]
    steps = int(np.clip(steps, -time, time))
    out = np.zeros_like(audio)
    if steps >= 0:
        out[steps:] = audio[: time - steps]
    else:
        out[: time + steps] = audio[-steps:]
    return out


def equaliser(*, band_gains_db: Sequence[float], taps: int) -> np.ndarray:
    """A zero-phase FIR (``[taps]``, odd) with the given gains at log-spaced band centres.

    Band ``k`` of ``K`` is centred at ``(1/16) ** (1 - k / (K - 1))`` of the Nyquist frequency
    (``1/16, 1/4, 1`` for 3 bands); the gain is flat below the first centre and linear in amplitude
    between centres.
    """
    gains = 10.0 ** (np.asarray(band_gains_db, np.float64) / 20.0)
    if gains.ndim != 1 or gains.size < 2:
        raise ValueError(f"band_gains_db needs 2 or more bands, got {band_gains_db!r}")
    centres = np.geomspace(1.0 / 16.0, 1.0, gains.size)
    return scipy.signal.firwin2(taps, np.concatenate([[0.0], centres]), np.concatenate([gains[:1], gains]))


def augment(*, audio: np.ndarray, rng: np.random.Generator, settings: Augmentation, frame_rate: float) -> np.ndarray:
    """One random augmentation of a crop: shift, EQ, gain, then noise (so the SNR is of the final signal).

    Parameters
    ----------
    audio : float ``[T, C]``
    rng : the only source of randomness: the same seed gives the same output
    settings : which augmentations, and how strong
    frame_rate : steps per second of ``audio`` (for ``max_shift_seconds``)

    Returns
    -------
    float32 ``[T, C]``; ``audio`` itself (as float32) when every augmentation is off
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [time, channels], got shape {audio.shape}")
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate!r}")
    if audio.shape[0] == 0:
        return audio.astype(np.float32)
    out = audio.astype(np.float64)
    if settings.max_shift_seconds:
        most = int(round(settings.max_shift_seconds * frame_rate))
        out = shift(out, int(rng.integers(-most, most + 1)))
    if settings.eq_db:
        gains = rng.uniform(-settings.eq_db, settings.eq_db, size=int(rng.integers(2, 4)))
        kernel = equaliser(band_gains_db=gains, taps=int(settings.eq_taps))
        out = scipy.signal.convolve(out, kernel[:, None], mode="same")  # odd symmetric kernel: no delay
    if settings.gain_db:
        out = out * 10.0 ** (rng.uniform(*settings.gain_db) / 20.0)
    if settings.noise_snr_db:
        snr_db = rng.uniform(*settings.noise_snr_db)
        power = float(np.mean(out ** 2)) if out.size else 0.0
        out = out + rng.standard_normal(out.shape) * math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return out.astype(np.float32)
