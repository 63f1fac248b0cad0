"""The demo backbone: synthetic pre-training corpus, pre-training run, and the shipped checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from asd.model import corpus, pretrain
from asd.model.beats import DEMO, BEATs, BEATsConfig, load_beats
from asd.cli import build_parser
from asd.data.demo import _MACHINES as DEMO_MACHINES
from asd.errors import AsdError
from asd.fingerprint import recorded_backbone_label

TINY = pretrain.PretrainSettings(
    machine_types=4, conditions=2, clips_per_condition=4, heldout_clips_per_condition=2, probe_types=3,
    probe_clips_per_condition=3, clip_seconds=1.0, steps=20, batch_size=8, warmup_steps=2, log_every=5,
)
SHIPPED = pretrain.SHIPPED
needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"{SHIPPED} not built (make pretrain)")


# ----------------------------------------------------------------------------- corpus


def test_corpus_is_deterministic_and_clips_are_independent():
    corpus.machine_type.cache_clear()
    first = corpus.machine_type(5)
    corpus.machine_type.cache_clear()
    assert corpus.machine_type(5) == first
    clip = corpus.synthesise(first, 1, index=3, seconds=0.5)
    assert clip.dtype == np.float32 and clip.shape == (8000,) and np.abs(clip).max() <= 1.0
    np.testing.assert_array_equal(clip, corpus.synthesise(first, 1, index=3, seconds=0.5))
    assert not np.array_equal(clip, corpus.synthesise(first, 1, index=4, seconds=0.5))
    assert not np.array_equal(clip[:4000], corpus.synthesise(first, 1, index=3, split="heldout", seconds=0.5)[:4000])
    assert corpus.machine_type(5, seed=1) != first
    # 16-bit grid, as the pipeline reads its WAVs
    np.testing.assert_array_equal(clip * 32768, np.round(clip * 32768))
    # a set is the same clips whatever subset is built
    both = corpus.build_set([2, 5], clips_per_condition=2, seconds=0.5, conditions=2)
    alone = corpus.build_set([5], clips_per_condition=2, seconds=0.5, conditions=2)
    assert both.fbank.shape == (8, 48, 128)
    torch.testing.assert_close(both.fbank[4:], alone.fbank, rtol=0, atol=0)
    assert both.label.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # and whatever the number of processes that generate it
    parallel = corpus.build_set([2, 5], clips_per_condition=2, seconds=0.5, conditions=2, workers=2)
    torch.testing.assert_close(parallel.fbank, both.fbank, rtol=0, atol=0)


def test_corpus_machine_types_are_disjoint_from_the_demo():
    demo = corpus.demo_fundamentals()
    expected = {spec.base_hz * speed for spec in DEMO_MACHINES for _, speed in (*spec.source, spec.target)}
    assert sorted(expected) == demo and len(demo) >= 15
    settings = pretrain.PretrainSettings()
    used = settings.machine_types + 2 * settings.probe_types  # trained, probed, and the tests' unseen types
    closest = math.inf
    for index in range(used):
        machine = corpus.machine_type(index, seed=settings.seed, conditions=settings.conditions)
        speeds = [c.speed for c in machine.conditions]
        assert all(b / a >= corpus.MIN_SPEED_STEP for a, b in zip(speeds, speeds[1:]))
        for fundamental in machine.fundamentals():
            # the clip's jitter (±1 %) included
            for jittered in (fundamental * 0.99, fundamental * 1.01):
                closest = min(closest, min(abs(math.log(jittered / d)) for d in demo))
    print(f"closest corpus fundamental to a demo operating fundamental: {math.exp(closest):.4f}x")
    assert math.exp(closest) >= corpus.GUARD_RATIO / 1.0101
    assert not {corpus.machine_type(i).name for i in range(used)} & {spec.name for spec in DEMO_MACHINES}


def test_corpus_clip_has_its_fundamental():
    machine = corpus.machine_type(7)
    clip = corpus.synthesise(machine, 0, seconds=2.0).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(clip * np.hanning(clip.size)))
    frequency = np.fft.rfftfreq(clip.size, 1 / corpus.SAMPLE_RATE)
    fundamental = machine.fundamentals()[0]
    harmonics = [k * fundamental for k in range(1, len(machine.harmonic_weights) + 1) if k * fundamental < 7500]
    near = lambda f: spectrum[(frequency > f * 0.985) & (frequency < f * 1.015)].max()
    between = lambda f: spectrum[(frequency > f * 1.3) & (frequency < f * 1.45)].mean()
    # the strongest harmonic stands far above the spectrum between harmonics
    strongest = max(harmonics, key=near)
    assert near(strongest) > 5 * between(strongest)


# ----------------------------------------------------------------------------- pre-training


def test_tiny_pretraining_lowers_loss_writes_a_strict_checkpoint_and_is_reproducible(tmp_path):
    first = pretrain.run(tmp_path / "a" / "backbone.pt", TINY)
    losses = [entry["loss"] for entry in first["history"]]
    print("tiny run losses", losses, "train", first["metrics"]["train"])
    assert losses[-1] < 0.7 * losses[0]
    assert first["metrics"]["train"]["class_accuracy"] > 1 / (TINY.machine_types * TINY.conditions) + 0.2

    path = tmp_path / "a" / "backbone.pt"
    assert (tmp_path / "a" / "backbone.pt.sha256").read_text() == f"{first['sha256']}  backbone.pt\n"
    assert pretrain.sha256_of(path) == first["sha256"] == pretrain.verify_sha256(path)
    assert (tmp_path / "a" / "backbone.pt.json").is_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"cfg", "model"}
    assert BEATsConfig.from_dict(state["cfg"]) == DEMO
    assert state["cfg"][pretrain.MARKER_KEY] == pretrain.LABEL == pretrain.read_marker(path)
    assert state["model"].keys() == BEATs(DEMO).state_dict().keys()  # all weights, no head
    for layers in (None, 2):
        model = load_beats(path, num_layers=layers)  # strict=True inside
        assert not model.random_init and model.num_layers == (layers or DEMO.encoder_layers)
    loaded = load_beats(path)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state["model"][key], rtol=0, atol=0)
    # every weight moved away from its initialisation
    torch.manual_seed(TINY.seed)
    initial = BEATs(DEMO).state_dict()
    unchanged = [key for key, value in state["model"].items() if torch.equal(value, initial[key])]
    assert not unchanged, unchanged

    second = pretrain.run(tmp_path / "b" / "other_name.pt", TINY)
    assert second["sha256"] == first["sha256"]  # bit for bit, whatever the file is called


def test_marker_absent_from_other_checkpoints(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"cfg": DEMO.to_dict(), "model": BEATs(DEMO).state_dict()}, path)
    assert pretrain.read_marker(path) is None
    assert pretrain.read_marker(tmp_path / "missing.pt") is None
    with pytest.raises(AsdError, match="sha256"):
        pretrain.verify_sha256(path)


def test_nearest_neighbour_accuracy():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert pretrain.nearest_neighbour_accuracy(features, np.array([0, 0, 1, 1])) == 1.0
    assert pretrain.nearest_neighbour_accuracy(features, np.array([0, 1, 0, 1])) == 0.0


def test_cli_pretrain_arguments():
    args = build_parser().parse_args(["pretrain", "--out", "x.pt", "--steps", "3"])
    assert (args.out, args.steps, args.seed, args.threads, args.workers) == ("x.pt", 3, 0, 1, 2)
    with pytest.raises(AsdError, match="unknown pretrain setting"):
        pretrain.settings_from({"epochs": 3})


# ----------------------------------------------------------------------------- the shipped checkpoint


@needs_shipped
def test_shipped_checkpoint_matches_its_sha256_and_loads_strictly():
    digest = pretrain.verify_sha256(SHIPPED)
    size = SHIPPED.stat().st_size
    print(f"{SHIPPED.name}: {size} bytes, sha256 {digest}")
    assert size < 4_000_000
    model = load_beats(SHIPPED, num_layers=4)
    assert not model.random_init and model.config == DEMO
    assert pretrain.read_marker(SHIPPED) == pretrain.LABEL
    details = torch.load(SHIPPED, map_location="cpu", weights_only=True)["cfg"][pretrain.DETAILS_KEY]
    assert details["format"] == pretrain.FORMAT
    assert details["settings"] == {**vars(pretrain.PretrainSettings())}  # built with the defaults `make pretrain` uses
    assert details["metrics"]["heldout"]["class_accuracy"] > 0.8
    # The workflow names it at parse time, without torch, from the report `asd pretrain` wrote beside it.
    assert recorded_backbone_label(str(SHIPPED), digest) == pretrain.LABEL


def test_recorded_label_only_for_the_weights_it_was_recorded_for(tmp_path):
    path = tmp_path / "backbone.pt"
    path.write_bytes(b"weights")
    assert recorded_backbone_label(str(path), "abc") is None  # no report
    (tmp_path / "backbone.pt.json").write_text(json.dumps({"label": pretrain.LABEL, "sha256": "abc"}))
    assert recorded_backbone_label(str(path), "abc") == pretrain.LABEL
    assert recorded_backbone_label(str(path), "other weights") is None  # replaced weights keep no stale label
    (tmp_path / "backbone.pt.json").write_text("{not json")
    assert recorded_backbone_label(str(path), "abc") is None


@needs_shipped
def test_shipped_backbone_separates_unseen_machine_types_better_than_random_init():
    """1-NN machine-type accuracy on corpus machine types that pre-training never generated."""
    settings = pretrain.PretrainSettings()
    first_unused = settings.machine_types + settings.probe_types
    data = corpus.build_set(range(first_unused, first_unused + 16), clips_per_condition=3, split="heldout",
                            seed=settings.seed, seconds=settings.clip_seconds, conditions=settings.conditions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pretrain.RANDOM_INIT_SEED)  # the demo's random-init backbone
        random_init = load_beats(None, config=DEMO)
    shipped = load_beats(SHIPPED)
    accuracy = {}
    for name, model in (("shipped", shipped), ("random-init", random_init)):
        features = pretrain.pooled_features(model, data.fbank)
        accuracy[name] = (pretrain.nearest_neighbour_accuracy(features, data.machine),
                          pretrain.nearest_neighbour_accuracy(features, data.label))
    print("1-NN accuracy on unseen machine types (machine type, type x condition):", accuracy)
    assert accuracy["shipped"][0] >= accuracy["random-init"][0] + 0.1
    assert accuracy["shipped"][1] >= accuracy["random-init"][1] + 0.1
