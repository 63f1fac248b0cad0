"""A synthetic machine-sound corpus for pre-training the demo backbone (``asd pretrain``).

Generated on the fly, in memory, from a seed: many randomised machine types, each with a few
operating conditions (speed / load settings), and any number of clips per (type, condition). A
machine type is a rotating machine drawn at random: a fundamental, a harmonic profile (number of
harmonics, decay, odd/even balance, random per-harmonic weights), a second rotating component at
a non-integer ratio (gear mesh, belt), one to three structural resonances excited by broadband
noise, amplitude modulation at a fraction of the rotation rate, optional periodic impacts, and a
coloured background at a machine-specific level. A condition scales the speed and sets a load
that tilts the harmonic profile and raises the broadband part.

Disjoint from the demo dataset (``asd.data.demo``), by construction:

- other machine types: every condition's nominal fundamental stays at least ``GUARD_RATIO``
  (8 %) away from every operating fundamental of the demo's six machine types (source and target
  settings; ``demo_fundamentals``): machine types that come closer are rejected and redrawn; the
  corpus' per-clip speed jitter (±1 %, uniform) cannot close that gap;
- another sound model: the demo's machines are 10 harmonics decaying as 0.75**k plus one
  whir band; here the harmonic count, decay, odd/even balance, second component, resonances,
  modulation and impacts are all random per type;
- other clips: every random draw comes from ``numpy.random.default_rng([CORPUS_TAG, seed, ...])``,
  a seed sequence the demo never uses (its generators are seeded ``[seed, machine]`` and
  ``[seed, crc32(name), crc32(attributes)]``), so no corpus clip reproduces a demo clip, train
  or test; nothing is read from the demo's files.

Every clip is an independent function of (seed, type, condition, split, index), so any subset is
generated in any order (or in parallel) with the same samples.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import math
import zlib

import numpy as np
import torch

from asd.data.demo import _MACHINES as _DEMO_MACHINES
from asd.data.demo import _band_noise, _coloured_noise, _smooth_curve, _unit_rms

SAMPLE_RATE = 16000
CORPUS_TAG = zlib.crc32(b"asd.corpus: synthetic machine sounds for pre-training")  # seed-sequence namespace
GUARD_RATIO = 1.08  # minimum ratio between a corpus fundamental and any demo operating fundamental
BASE_HZ_RANGE = (25.0, 420.0)  # log-uniform
SPEED_RANGE = (0.6, 1.8)
MIN_SPEED_STEP = 1.12  # conditions of one type differ in speed by at least this ratio
SPLITS = {"train": 0, "heldout": 1}  # separate clip streams: held-out clips are never trained on


@dataclasses.dataclass(frozen=True)
class Condition:
    speed: float  # factor on the machine's base fundamental
    load: float  # 0..1: tilts the harmonic profile and raises the broadband part


@dataclasses.dataclass(frozen=True)
class MachineType:
    index: int
    base_hz: float
    harmonic_weights: tuple[float, ...]  # amplitude of harmonic k = 1..K at load 0
    second_ratio: float  # second rotating component's frequency / fundamental (non-integer)
    second_level: float
    resonances: tuple[tuple[float, float, float], ...]  # (centre Hz, width Hz, level) of noise bands
    modulation_ratio: float  # amplitude modulation rate / fundamental
    modulation_depth: float
    impacts_per_rev: int  # 0: none
    impact_hz: float
    background_slope: float  # 0 white .. 2 brown
    snr_db: float  # machine-to-background ratio
    conditions: tuple[Condition, ...]

    @property
    def name(self) -> str:
        return f"synth{self.index:03d}"

    def fundamentals(self) -> list[float]:
        """Nominal fundamental of each condition, Hz."""
        return [self.base_hz * condition.speed for condition in self.conditions]


def demo_fundamentals() -> list[float]:
    """Every operating fundamental of the demo's machine types: base_hz x speed of each setting."""
    return sorted({spec.base_hz * speed for spec in _DEMO_MACHINES
                   for _, speed in (*spec.source, spec.target)})


def _far_from_demo(frequency: float) -> bool:
    return all(abs(math.log(frequency / demo)) >= math.log(GUARD_RATIO) for demo in demo_fundamentals())


@functools.lru_cache(maxsize=4096)
def machine_type(index: int, *, seed: int = 0, conditions: int = 3) -> MachineType:
    """Machine type ``index`` of the corpus of ``seed``: random, but a pure function of its arguments."""
    rng = np.random.default_rng([CORPUS_TAG, seed, 0, index])
    while True:  # rejection sampling: redraw until every condition is clear of the demo's fundamentals
        base_hz = float(np.exp(rng.uniform(*np.log(BASE_HZ_RANGE))))
        speeds = np.sort(rng.uniform(*SPEED_RANGE, size=conditions))
        spaced = bool(np.all(speeds[1:] / speeds[:-1] >= MIN_SPEED_STEP))
        if spaced and all(_far_from_demo(base_hz * speed) for speed in speeds):
            break
    loads = rng.permutation(np.linspace(0.0, 1.0, conditions))  # load not tied to speed
    count = int(rng.integers(4, 25))
    harmonics = np.arange(1, count + 1)
    weights = rng.uniform(0.55, 0.95) ** harmonics * rng.lognormal(0.0, 0.8, size=count)
    weights[1::2] *= rng.uniform(0.1, 1.0)  # even harmonics: from suppressed to full
    resonances = tuple(
        (float(np.exp(rng.uniform(np.log(300.0), np.log(6500.0)))), float(rng.uniform(80.0, 900.0)),
         float(rng.uniform(0.2, 1.0)))
        for _ in range(int(rng.integers(1, 4)))
    )
    impacts = int(rng.integers(1, 5)) if rng.random() < 0.35 else 0
    return MachineType(
        index=index,
        base_hz=base_hz,
        harmonic_weights=tuple(float(w) for w in weights / np.sqrt(np.sum(weights**2))),
        second_ratio=float(rng.uniform(1.3, 9.7)),
        second_level=float(rng.uniform(0.0, 0.6)),
        resonances=resonances,
        modulation_ratio=float(rng.choice([0.25, 0.5, 1.0, 2.0]) * rng.uniform(0.9, 1.1)),
        modulation_depth=float(rng.uniform(0.0, 0.5)),
        impacts_per_rev=impacts,
        impact_hz=float(rng.uniform(1500.0, 6000.0)),
        background_slope=float(rng.uniform(0.0, 2.0)),
        snr_db=float(rng.uniform(0.0, 18.0)),
        conditions=tuple(Condition(speed=float(s), load=float(l)) for s, l in zip(speeds, loads)),
    )


def synthesise(machine: MachineType, condition: int, *, seed: int = 0, split: str = "train", index: int = 0,
               seconds: float = 3.0) -> np.ndarray:
    """One clip as float32 [samples] in [-1, 1] on the 16-bit grid, at a random loudness (-42..-14 dBFS)."""
    rng = np.random.default_rng([CORPUS_TAG, seed, 1, machine.index, condition, SPLITS[split], index])
    setting = machine.conditions[condition]
    samples = int(round(seconds * SAMPLE_RATE))
    fundamental = machine.base_hz * setting.speed * (1.0 + rng.uniform(-0.01, 0.01))
    frequency = fundamental * (1.0 + 0.003 * _smooth_curve(rng, samples, points=6))  # [samples]
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE  # [samples]

    weights = np.asarray(machine.harmonic_weights)
    harmonics = np.arange(1, weights.size + 1)
    weights = weights * harmonics ** (0.8 * setting.load - 0.4)  # load brightens the profile
    amplitudes = weights * rng.lognormal(0.0, 0.08, size=weights.size) * np.exp(
        1j * rng.uniform(0, 2 * np.pi, size=weights.size))
    rotor, power, hum = np.exp(1j * phase), np.ones(samples, dtype=complex), np.zeros(samples)
    for amplitude in amplitudes:  # harmonic k is rotor**k
        power *= rotor
        hum += (amplitude * power).imag
    machine_sound = _unit_rms(hum)
    if machine.second_level > 0:
        second = np.sin(machine.second_ratio * phase + rng.uniform(0, 2 * np.pi))
        machine_sound += machine.second_level * np.sqrt(2) * second

    broadband = np.zeros(samples)
    for centre_hz, width_hz, level in machine.resonances:
        broadband += level * _band_noise(rng, samples, centre_hz=centre_hz, width_hz=width_hz)
    if machine.impacts_per_rev:
        gate = (np.sin(machine.impacts_per_rev * phase) > 0.97).astype(float)
        ring_time = np.arange(int(0.006 * SAMPLE_RATE)) / SAMPLE_RATE
        ring = np.exp(-ring_time / 0.0015) * np.sin(2 * np.pi * machine.impact_hz * ring_time)
        broadband += 0.5 * _unit_rms(np.convolve(gate, ring)[:samples] + 1e-9)
    machine_sound += (0.3 + 0.7 * setting.load) * _unit_rms(broadband + 1e-9 * rng.standard_normal(samples))
    machine_sound *= 1.0 + machine.modulation_depth * np.sin(
        machine.modulation_ratio * phase + rng.uniform(0, 2 * np.pi))

    background = _coloured_noise(rng, samples, slope=machine.background_slope)
    background *= 1.0 + 0.3 * _smooth_curve(rng, samples, points=5)
    snr_db = machine.snr_db + rng.uniform(-2.0, 2.0)
    sound = _unit_rms(machine_sound) + background * 10 ** (-snr_db / 20)
    sound *= 10 ** (rng.uniform(-42.0, -14.0) / 20) / np.sqrt(np.mean(sound**2))
    # As the pipeline reads it: a 16-bit PCM clip.
    return (np.clip(np.round(sound * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


@dataclasses.dataclass
class CorpusSet:
    """Clips as fbank: ``fbank`` [N, frames, 128] float32; labels per clip."""

    fbank: torch.Tensor
    machine: np.ndarray  # [N] int: position of the machine type in ``types``
    condition: np.ndarray  # [N] int
    types: list[MachineType]

    @property
    def label(self) -> np.ndarray:
        """Joint (machine type, condition) class per clip."""
        return self.machine * len(self.types[0].conditions) + self.condition


def build_set(type_indices, *, clips_per_condition: int, seed: int = 0, split: str = "train",
              seconds: float = 3.0, conditions: int = 3, workers: int = 1) -> CorpusSet:
    """The fbank of every clip of the given machine types (clip order: type, condition, index).

    ``workers`` processes synthesise machine types in parallel; the result does not depend on it
    (every clip has its own generator, and the fbank always runs on one torch thread).
    """
    types = [machine_type(int(index), seed=seed, conditions=conditions) for index in type_indices]
    jobs = [(machine.index, seed, conditions, split, clips_per_condition, seconds) for machine in types]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child of a process whose torch thread pools have started can hang
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            banks = list(pool.map(_type_fbank, jobs))
    else:
        banks = list(map(_type_fbank, jobs))
    count = conditions * clips_per_condition
    return CorpusSet(fbank=torch.from_numpy(np.concatenate(banks)),
                     machine=np.repeat(np.arange(len(types)), count),
                     condition=np.tile(np.repeat(np.arange(conditions), clips_per_condition), len(types)),
                     types=types)


def _type_fbank(job: tuple) -> np.ndarray:
    """fbank [conditions x clips, frames, 128] float32 of one machine type's clips (one torch thread)."""
    from asd.model.beats import fbank

    index, seed, conditions, split, clips_per_condition, seconds = job
    machine = machine_type(index, seed=seed, conditions=conditions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        banks = []
        for condition in range(conditions):
            waves = np.stack([synthesise(machine, condition, seed=seed, split=split, index=clip, seconds=seconds)
                              for clip in range(clips_per_condition)])  # [C, S]
            banks.append(fbank(torch.from_numpy(waves)).numpy())  # [C, F, 128]
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(banks)
