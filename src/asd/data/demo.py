"""A small synthetic dataset in the exact DCASE 2025 Task 2 layout, for demos and workflow tests.

The sounds are synthetic but built to behave like the real task: a motor hum whose speed and
harmonic weights follow the clip's attributes, a machine-specific broadband whir and a coloured
background noise; the target domain runs at another speed in another background (a real domain
shift); anomalies are clicks, an extra tone, amplitude modulation or rattles, and every clip is
normalised to a random loudness so that level alone tells nothing. Supplemental folders cover
every naming case: names that say machine, names that say noise, and neutral names (one
noise-only, one clean machine) left to the pipeline's noise detector.

Besides the distributed layout it writes ``anomaly_kinds_demo.csv``: the anomaly kind of every test
clip (``normal`` for normal ones), by its distributed name. The pipeline never reads it;
bench/accuracy.py uses it to show which kinds of anomaly a system detects.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from asd.errors import AsdError
from asd.io import write_text

SAMPLE_RATE = 16000
GROUND_TRUTH_NAME = "eval_data_list_demo.csv"
ANOMALY_KINDS_NAME = "anomaly_kinds_demo.csv"  # machine,file,domain,kind of every test clip
_MARKER = ".asd_demo"  # marks a folder this module wrote, so a rerun may replace it
_ANOMALY_TYPES = ("clicks", "tone", "modulation", "rattle")


@dataclasses.dataclass(frozen=True)
class _Scale:
    source_train: int
    target_train: int
    supplemental: int
    test_per_group: int  # clips per (domain, label) pair
    clip_seconds: float
    short_seconds: float  # the first clip of each group, to exercise padding


SCALES = {
    "demo": _Scale(source_train=24, target_train=4, supplemental=12, test_per_group=25,
                   clip_seconds=10.0, short_seconds=8.0),
    # bench/accuracy's fresh draw: the demo's training clips, twice its test clips (50 per domain and
    # label, as in the real development set)
    "accuracy": _Scale(source_train=24, target_train=4, supplemental=12, test_per_group=50,
                       clip_seconds=10.0, short_seconds=8.0),
    "tiny": _Scale(source_train=4, target_train=3, supplemental=3, test_per_group=2,
                   clip_seconds=2.0, short_seconds=1.5),
}

Attributes = tuple[tuple[str, str], ...]  # (("spd", "28V"), ("m-n", "W")) -> 'spd_28V_m-n_W'


@dataclasses.dataclass(frozen=True)
class _MachineSpec:
    name: str
    dataset: str  # "dev" | "eval"
    base_hz: float  # motor fundamental at speed factor 1
    source: tuple[tuple[Attributes, float], ...]  # (attributes, speed factor) of source-domain settings
    target: tuple[Attributes, float]  # the target-domain setting: another operating speed
    hidden: bool  # names say noAttribute, as for bearing / Polisher in the real data
    supplemental_content: str  # "machine" | "noise": what the supplemental clips really are
    supplemental_name: str  # format with {index} and {attributes}


_MACHINES = (
    _MachineSpec(
        name="fan", dataset="dev", base_hz=95.0,
        source=(((("m-n", "W"), ("spd", "28V")), 1.0), ((("m-n", "X"), ("spd", "28V")), 1.0),
                ((("m-n", "W"), ("spd", "31V")), 1.1)),
        target=((("m-n", "Y"), ("spd", "40V")), 1.45), hidden=False,
        supplemental_content="machine", supplemental_name="section_00_machine_{index:04d}_.wav",
    ),
    _MachineSpec(
        name="bearing", dataset="dev", base_hz=140.0,
        source=(((("vel", "8"), ("loc", "A")), 1.0), ((("vel", "12"), ("loc", "A")), 1.2)),
        target=((("vel", "20"), ("loc", "B")), 1.7), hidden=True,
        supplemental_content="noise", supplemental_name="section_00_noise_{index:04d}_.wav",
    ),
    _MachineSpec(  # neutral supplemental names, noise-only content
        name="valve", dataset="dev", base_hz=60.0,
        source=(((("v1pat", "00"), ("v2pat", "01")), 1.0), ((("v1pat", "02"), ("v2pat", "01")), 1.05)),
        target=((("v1pat", "03"), ("v2pat", "04")), 1.35), hidden=False,
        supplemental_content="noise", supplemental_name="section_00_{index:04d}.wav",
    ),
    _MachineSpec(
        name="BandSealer", dataset="eval", base_hz=110.0,
        source=(((("spd", "6"), ("n", "D")), 1.0), ((("spd", "8"), ("n", "D")), 1.15)),
        target=((("spd", "3"), ("n", "E")), 0.6), hidden=False,
        supplemental_content="machine",
        supplemental_name="section_00_machine_source_{index:04d}_{attributes}.wav",
    ),
    _MachineSpec(  # neutral supplemental names, clean machine content
        name="Polisher", dataset="eval", base_hz=180.0,
        source=(((("pow", "1"), ("n", "A")), 1.0), ((("pow", "2"), ("n", "A")), 1.1)),
        target=((("pow", "4"), ("n", "C")), 1.5), hidden=True,
        supplemental_content="machine", supplemental_name="section_00_{index:04d}_noAttribute.wav",
    ),
    _MachineSpec(
        name="CoffeeGrinder", dataset="eval", base_hz=75.0,
        source=(((("lvl", "1.5"), ("bean", "A")), 1.0), ((("lvl", "2.5"), ("bean", "A")), 1.2)),
        target=((("lvl", "0.5"), ("bean", "C")), 0.6), hidden=False,
        supplemental_content="noise", supplemental_name="section_00_noise_{index:04d}.wav",
    ),
)

# Background per domain: spectral slope (1 = pink, 0 = white) and machine-to-noise ratio in dB.
_BACKGROUND = {"source": (1.0, 10.0), "target": (0.2, 3.0)}


@dataclasses.dataclass(frozen=True)
class _Clip:
    """One clip to synthesise and where it goes."""
    split: str  # train | test | supplemental
    name: str  # file name in the distributed layout
    domain: str
    label: str  # normal | anomaly
    attributes: Attributes
    speed: float
    seconds: float
    gain_db: float  # RMS level of the written clip, dBFS
    content: str = "machine"  # machine | noise
    original_name: str = ""  # eval test: the labelled name the ground truth lists


def generate_demo(out_root: str | os.PathLike, *, seed: int = 0, scale: str = "demo", workers: int = 1) -> dict:
    """Write the demo dataset under ``out_root``; return its roots, ground truth and true supplemental kinds.

    ``workers`` processes synthesise machine types in parallel.

    Layout: ``dev_data/raw/<machine>/...`` (labelled test names), ``eval_data/raw/<machine>/...``
    (unlabelled ``section_00_NNNN.wav`` test names), ``eval_data_list_demo.csv`` and
    ``anomaly_kinds_demo.csv``. The same seed gives byte-identical files. A previous demo in
    ``out_root`` is replaced.
    """
    if scale not in SCALES:
        raise AsdError(f"demo scale {scale!r} is unknown; use one of {', '.join(SCALES)}.")
    out_root = Path(out_root).resolve()
    for dataset in ("dev_data", "eval_data"):
        existing = out_root / dataset
        if existing.exists() and not (existing / _MARKER).is_file():
            raise AsdError(
                f"{existing} exists and was not written by the demo generator; choose another output "
                "folder for the demo or delete it."
            )
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=out_root))
    try:
        # Each machine type draws from its own generator, so the files do not depend on the worker count.
        write_machine = functools.partial(_write_machine, staging=staging, seed=seed, scale=SCALES[scale])
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) if workers > 1 else \
                contextlib.nullcontext() as pool:
            written = list((pool.map if pool else map)(write_machine, range(len(_MACHINES))))
        write_text(staging / GROUND_TRUTH_NAME,
                   "\n".join(line for truth_lines, _ in written for line in truth_lines) + "\n")
        write_text(staging / ANOMALY_KINDS_NAME,
                   "\n".join(["machine,file,domain,kind", *(row for _, rows in written for row in rows)]) + "\n")
        for dataset in ("dev_data", "eval_data"):
            write_text(staging / dataset / _MARKER, f"seed={seed} scale={scale}\n")
            if (out_root / dataset).exists():
                shutil.rmtree(out_root / dataset)
            os.replace(staging / dataset, out_root / dataset)
        for name in (GROUND_TRUTH_NAME, ANOMALY_KINDS_NAME):
            os.replace(staging / name, out_root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "dev_root": str(out_root / "dev_data" / "raw"),
        "eval_root": str(out_root / "eval_data" / "raw"),
        "ground_truth": str(out_root / GROUND_TRUTH_NAME),
        "anomaly_kinds": str(out_root / ANOMALY_KINDS_NAME),
        "machine_types": {
            dataset: [spec.name for spec in _MACHINES if spec.dataset == dataset] for dataset in ("dev", "eval")
        },
        "supplemental_content": {spec.name: spec.supplemental_content for spec in _MACHINES},
    }


def _write_machine(machine_index: int, *, staging: Path, seed: int, scale: _Scale) -> tuple[list[str], list[str]]:
    """Synthesise one machine type's clips into ``staging``; its ground-truth lines (eval machine types) and
    its anomaly-kind rows (every test clip)."""
    spec = _MACHINES[machine_index]
    rng = np.random.default_rng([seed, machine_index])
    clips = _plan_clips(spec, scale, rng)
    folder = staging / f"{spec.dataset}_data" / "raw" / spec.name
    kinds = {}
    for clip in clips:
        sound, kinds[clip.name] = _synthesise(spec, clip, seed=seed, rng=rng)
        _write_wav(folder / clip.split / clip.name, sound)
    _write_attributes_csv(folder, spec, clips)
    test_clips = sorted((clip for clip in clips if clip.split == "test"), key=lambda clip: clip.name)
    kind_rows = [f"{spec.name},{clip.name},{clip.domain},{kinds[clip.name] or 'normal'}" for clip in test_clips]
    if spec.dataset != "eval":
        return [], kind_rows
    return [spec.name] + [f"{clip.name},{clip.original_name}" for clip in test_clips], kind_rows


def _attribute_string(attributes: Attributes) -> str:
    return "_".join(f"{key}_{value}" for key, value in attributes)


def _plan_clips(spec: _MachineSpec, scale: _Scale, rng: np.random.Generator) -> list[_Clip]:
    """Every clip of one machine type: names, domains, labels, settings and loudness."""
    def shown(attributes: Attributes) -> str:
        return "noAttribute" if spec.hidden else _attribute_string(attributes)

    def seconds(index: int) -> float:
        return scale.short_seconds if index == 0 else scale.clip_seconds

    def source_setting() -> tuple[Attributes, float]:
        return spec.source[rng.integers(len(spec.source))]

    clips = []
    for domain, count in (("source", scale.source_train), ("target", scale.target_train)):
        for index in range(count):
            attributes, speed = source_setting() if domain == "source" else spec.target
            clips.append(_Clip(
                split="train", name=f"section_00_{domain}_train_normal_{index:04d}_{shown(attributes)}.wav",
                domain=domain, label="normal", attributes=attributes, speed=speed, seconds=seconds(index),
                gain_db=rng.uniform(-32, -20),
            ))
    for index in range(scale.supplemental):
        attributes, speed = source_setting()
        clips.append(_Clip(
            split="supplemental", name=spec.supplemental_name.format(index=index, attributes=shown(attributes)),
            domain="source", label="normal", attributes=attributes, speed=speed, seconds=scale.clip_seconds,
            gain_db=rng.uniform(-32, -20), content=spec.supplemental_content,
        ))
    test_clips = []
    for domain in ("source", "target"):
        # Normals and anomalies of a domain share one set of loudness levels, so level carries no label.
        gains_db = rng.uniform(-32, -20, size=scale.test_per_group)
        for label in ("normal", "anomaly"):
            for index, gain_db in enumerate(rng.permutation(gains_db)):
                attributes, speed = source_setting() if domain == "source" else spec.target
                stem = f"section_00_{domain}_test_{label}_{index:04d}"
                test_clips.append(_Clip(
                    split="test", name=f"{stem}_{shown(attributes)}.wav", domain=domain, label=label,
                    attributes=attributes, speed=speed, seconds=seconds(index), gain_db=gain_db,
                    original_name=f"{stem}_{_attribute_string(attributes)}.wav",
                ))
    if spec.dataset == "eval":  # distributed test names hide label and domain, in shuffled order
        order = rng.permutation(len(test_clips))
        test_clips = [
            dataclasses.replace(clip, name=f"section_00_{position:04d}.wav")
            for position, clip in zip(order, test_clips)
        ]
    return clips + test_clips


def _synthesise(
    spec: _MachineSpec, clip: _Clip, *, seed: int, rng: np.random.Generator
) -> tuple[np.ndarray, str | None]:
    """One clip, float64 [samples], RMS at clip.gain_db dBFS, and its anomaly kind (None: normal)."""
    samples = int(round(clip.seconds * SAMPLE_RATE))
    slope, machine_to_noise_db = _BACKGROUND[clip.domain]
    background = _coloured_noise(rng, samples, slope=slope)
    # Slow level drift of the background, as in a factory hall.
    background *= 1.0 + 0.3 * _smooth_curve(rng, samples, points=8)
    kind = None
    if clip.content == "noise":
        sound = background
    else:
        machine, kind = _machine_sound(spec, clip, seed=seed, rng=rng, samples=samples)
        snr_db = machine_to_noise_db + rng.normal(0.0, 1.5)
        sound = machine + background * 10 ** (-snr_db / 20)
    sound *= 10 ** (clip.gain_db / 20) / np.sqrt(np.mean(sound**2))
    return sound, kind


def _machine_sound(
    spec: _MachineSpec, clip: _Clip, *, seed: int, rng: np.random.Generator, samples: int
) -> tuple[np.ndarray, str | None]:
    """Harmonic motor hum + broadband whir (RMS 1), with the clip's anomaly if it has one; the anomaly's kind."""
    time = np.arange(samples) / SAMPLE_RATE
    # The harmonic profile is a fixed function of the machine and its attribute setting.
    setting_rng = np.random.default_rng(
        [seed, zlib.crc32(spec.name.encode()), zlib.crc32(_attribute_string(clip.attributes).encode())]
    )
    harmonics = np.arange(1, 11)  # [10]
    weights = 0.75**harmonics * setting_rng.lognormal(0.0, 0.6, size=harmonics.size)  # [10]
    resonance_hz = 1500.0 + 2500.0 * setting_rng.random()

    fundamental = spec.base_hz * clip.speed * (1.0 + rng.normal(0.0, 0.01))
    frequency = fundamental * (1.0 + 0.004 * _smooth_curve(rng, samples, points=12))  # [samples]
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE  # [samples]
    # Complex amplitude of each harmonic: jittered weight, random starting phase.
    amplitudes = weights * rng.lognormal(0.0, 0.1, size=harmonics.size) * np.exp(
        1j * rng.uniform(0, 2 * np.pi, size=harmonics.size)
    )
    # Harmonic k is rotor**k: repeated multiplication is much cheaper than a sine per harmonic.
    rotor = np.exp(1j * phase)  # [samples]
    power = np.ones_like(rotor)
    hum = np.zeros(samples)
    for amplitude in amplitudes:
        power *= rotor
        hum += (amplitude * power).imag
    whir = _band_noise(rng, samples, centre_hz=resonance_hz, width_hz=600.0)
    # Blade / rotor passing modulates the whir at the rotation rate.
    whir *= 1.0 + 0.3 * np.sin(2 * np.pi * fundamental * time)
    machine = _unit_rms(hum) + 0.4 * _unit_rms(whir)

    kind = None
    if clip.label == "anomaly":
        kind = _ANOMALY_TYPES[rng.integers(len(_ANOMALY_TYPES))]
        machine = _add_anomaly(kind, machine, rng=rng, time=time, fundamental=fundamental, phase=phase)
    return _unit_rms(machine), kind


def _add_anomaly(
    kind: str, machine: np.ndarray, *, rng: np.random.Generator, time: np.ndarray, fundamental: float,
    phase: np.ndarray,
) -> np.ndarray:
    samples = machine.size
    if kind == "clicks":  # a damaged part knocking: sparse short resonant impulses
        impulses = np.zeros(samples)
        count = int(rng.uniform(2, 6) * samples / SAMPLE_RATE)
        impulses[rng.integers(0, samples, size=count)] = rng.uniform(2.5, 5.0, size=count)
        ring_time = np.arange(int(0.01 * SAMPLE_RATE)) / SAMPLE_RATE
        ring = np.exp(-ring_time / 0.002) * np.sin(2 * np.pi * rng.uniform(2000, 5000) * ring_time)
        return machine + np.convolve(impulses, ring)[:samples]
    if kind == "tone":  # a worn gear or bearing: a tone off the harmonic series
        ratio = rng.integers(2, 5) + rng.uniform(0.3, 0.7)  # well between two harmonics
        return machine + rng.uniform(0.3, 0.5) * np.sqrt(2) * np.sin(ratio * phase)
    if kind == "modulation":  # an imbalance: slow periodic swelling of the whole sound
        return machine * (1.0 + rng.uniform(0.45, 0.7) * np.sin(2 * np.pi * rng.uniform(1.5, 5.0) * time))
    # rattle: a loose part struck once per revolution, in short broadband bursts
    gate = (np.sin(2 * np.pi * fundamental / rng.integers(2, 5) * time) > 0.85).astype(float)
    burst = _band_noise(rng, samples, centre_hz=rng.uniform(800, 2500), width_hz=1200.0)
    return machine + rng.uniform(0.6, 0.9) * _unit_rms(burst) * gate


def _coloured_noise(rng: np.random.Generator, samples: int, *, slope: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**slope, RMS 1."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequency = np.fft.rfftfreq(samples, d=1.0 / SAMPLE_RATE)
    spectrum *= np.maximum(frequency, 20.0) ** (-slope / 2)
    return _unit_rms(np.fft.irfft(spectrum, n=samples))


def _band_noise(rng: np.random.Generator, samples: int, *, centre_hz: float, width_hz: float) -> np.ndarray:
    """Noise with a Gaussian band around centre_hz, RMS 1."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequency = np.fft.rfftfreq(samples, d=1.0 / SAMPLE_RATE)
    spectrum *= np.exp(-0.5 * ((frequency - centre_hz) / width_hz) ** 2)
    return _unit_rms(np.fft.irfft(spectrum, n=samples))


def _smooth_curve(rng: np.random.Generator, samples: int, *, points: int) -> np.ndarray:
    """A slow random curve in about [-1, 1] over the clip (random knots, linearly interpolated)."""
    knots = rng.uniform(-1.0, 1.0, size=points)
    return np.interp(np.linspace(0, points - 1, samples), np.arange(points), knots)


def _unit_rms(signal: np.ndarray) -> np.ndarray:
    return signal / np.sqrt(np.mean(signal**2))


def _write_wav(path: Path, sound: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(sound, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _write_attributes_csv(folder: Path, spec: _MachineSpec, clips: list[_Clip]) -> None:
    """attributes_00.csv as distributed: train and test rows; only file_name where attributes are hidden."""
    listed = [clip for clip in clips if clip.split in ("train", "test")]
    pair_count = max(len(clip.attributes) for clip in listed)
    header = ["file_name"] if spec.hidden else ["file_name"] + [
        f"d{number}{part}" for number in range(1, pair_count + 1) for part in ("p", "v")
    ]
    lines = [",".join(header)]
    for clip in listed:
        values = [] if spec.hidden else [item for pair in clip.attributes for item in pair]
        lines.append(",".join([f"{spec.name}/{clip.split}/{clip.name}", *values]))
    write_text(folder / "attributes_00.csv", "\n".join(lines) + "\n")
