"""Conformance of asd.model.beats against outputs of the official BEATs code (shared/conformance/)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from asd.fingerprint import file_sha256
from asd.model.beats import (
    DEMO,
    ITER3,
    BEATs,
    BEATsConfig,
    adapt_checkpoint,
    fbank,
    frame_padding_mask,
    load_beats,
    relative_position_bucket,
)
from asd.errors import AsdError
from conftest import SHARED

CONFORMANCE = SHARED / "conformance"
TINY_CKPT = CONFORMANCE / "beats_tiny_ckpt.pt"

pytestmark = pytest.mark.skipif(
    not (CONFORMANCE / "beats_tiny_expected.npz").is_file(),
    reason=f"BEATs conformance data not found in {CONFORMANCE} (set ASD_SHARED to the shared/ folder)",
)

ATOL, RTOL = 2e-4, 1e-4


def assert_close(name: str, actual: torch.Tensor, expected: np.ndarray) -> float:
    """Assert reference tolerance; return and print the max abs error for the record."""
    expected_tensor = torch.from_numpy(expected)
    error = (actual.float() - expected_tensor).abs().max().item()
    print(f"{name}: max abs error {error:.3g}")
    torch.testing.assert_close(actual.float(), expected_tensor, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
    return error


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    data = np.load(CONFORMANCE / "beats_inputs.npz")
    return {"waveforms": torch.from_numpy(data["waveforms"]), "padding_mask": torch.from_numpy(data["padding_mask"])}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(CONFORMANCE / "beats_tiny_expected.npz"))


@pytest.fixture(scope="module")
def tiny() -> BEATs:
    return load_beats(TINY_CKPT)


@pytest.fixture(scope="module")
def tiny_run(tiny, expected) -> dict:
    """One masked forward of the tiny checkpoint on the reference fbank, with the projection captured."""
    captured = {}
    hook = tiny.post_extract_proj.register_forward_hook(lambda module, args, output: captured.update(proj=output))
    with torch.no_grad():
        output, token_mask, hidden = tiny.forward_fbank(
            torch.from_numpy(expected["fbank"]), torch.from_numpy(expected["frame_padding_mask"]), output_layers=True
        )
    hook.remove()
    return {"output": output, "token_mask": token_mask, "hidden": hidden, "proj": captured["proj"]}


def test_fbank_and_padding_masks_match_reference(inputs, expected):
    features = fbank(inputs["waveforms"])
    assert features.shape == (3, 998, 128)
    assert_close("fbank", features, expected["fbank"])
    frame_mask = frame_padding_mask(inputs["padding_mask"], features.size(1))
    assert torch.equal(frame_mask, torch.from_numpy(expected["frame_padding_mask"]))
    with pytest.raises(AsdError, match="44100 Hz"):
        fbank(inputs["waveforms"], sample_rate=44100)


def test_every_hidden_state_matches_reference(tiny_run, expected):
    assert torch.equal(tiny_run["token_mask"], torch.from_numpy(expected["token_padding_mask"]))
    errors = [
        assert_close("post_extract_proj", tiny_run["proj"], expected["post_extract_proj"]),
        assert_close("encoder_input", tiny_run["hidden"][0], expected["encoder_input"]),
    ]
    assert len(tiny_run["hidden"]) == 7
    for index, layer_output in enumerate(tiny_run["hidden"][1:]):
        errors.append(assert_close(f"layer_outputs[{index}]", layer_output, expected["layer_outputs"][index]))
    assert torch.equal(tiny_run["output"], tiny_run["hidden"][-1])
    print(f"max abs error over all hidden states: {max(errors):.3g}")


def test_waveform_api_matches_reference_with_and_without_mask(tiny, inputs, expected):
    waveforms, padding_mask = inputs["waveforms"], inputs["padding_mask"]
    with torch.no_grad():
        output, token_mask = tiny.extract_features(waveforms, padding_mask)
        nomask_output, nomask_token_mask = tiny.extract_features(waveforms[:2])
        clip2_output, _ = tiny.extract_features(waveforms[2:, :104000])
    assert_close("output", output, expected["output"])
    assert torch.equal(token_mask, torch.from_numpy(expected["token_padding_mask"]))
    assert token_mask[2].nonzero().min().item() == 325 and not token_mask[:2].any()
    assert nomask_token_mask is None
    assert_close("nomask_output", nomask_output, expected["nomask_output"])
    assert clip2_output.shape == (1, 320, 64)
    assert_close("clip2_unpadded_output", clip2_output, expected["clip2_unpadded_output"])


def test_truncated_encoder_equals_first_layers(tiny, tiny_run, expected):
    truncated = load_beats(TINY_CKPT, num_layers=4)
    assert len(truncated.encoder.layers) == 4
    assert not any(".layers.4." in key for key in truncated.state_dict())
    with torch.no_grad():
        output, _ = truncated.forward_fbank(
            torch.from_numpy(expected["fbank"]), torch.from_numpy(expected["frame_padding_mask"])
        )
    assert_close("output_4layers", output, expected["output_4layers"])
    assert (output - tiny_run["hidden"][4]).abs().max().item() <= 1e-6


def test_relative_position_buckets_match_reference(expected):
    offsets = torch.from_numpy(expected["rel_pos_offsets"]).long()
    buckets = relative_position_bucket(offsets, num_buckets=320, max_distance=800)
    assert torch.equal(buckets, torch.from_numpy(expected["rel_pos_bucket_by_offset"]).long())


def test_bf16_autocast_is_finite_and_close_to_float32(tiny, tiny_run, expected):
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output, _ = tiny.forward_fbank(
            torch.from_numpy(expected["fbank"]), torch.from_numpy(expected["frame_padding_mask"])
        )
    deviation = (output.float() - tiny_run["output"]).abs()
    cosine = torch.nn.functional.cosine_similarity(output.float(), tiny_run["output"], dim=-1)
    print(f"bf16 vs fp32: max {deviation.max().item():.3g}, mean {deviation.mean().item():.3g}, min cos {cosine.min().item():.6f}")
    assert torch.isfinite(output).all()
    assert deviation.max().item() < 0.25 and deviation.mean().item() < 0.02 and cosine.min().item() > 0.999


def test_iter3_architecture_keys_params_and_strict_round_trip(tmp_path):
    reference = json.loads((CONFORMANCE / "beats_iter3_keys.json").read_text())
    reference_cfg = json.loads((CONFORMANCE / "beats_iter3_cfg.json").read_text())
    assert ITER3.to_dict() == reference_cfg
    model = load_beats(None)
    assert model.random_init and not model.training
    state = model.state_dict()
    assert len(state) == 250
    assert {key: list(value.shape) for key, value in state.items()} == {
        entry["name"]: entry["shape"] for entry in reference["keys"]
    }
    assert sum(parameter.numel() for parameter in model.parameters()) == reference["num_unique_parameters"] == 90_311_792

    path = tmp_path / "iter3_random.pt"
    torch.save({"cfg": {**ITER3.to_dict(), "future_field": 1}, "model": state, "label_dict": {}}, path)
    loaded = load_beats(path, num_layers=4)
    assert not loaded.random_init and loaded.config == ITER3 and len(loaded.encoder.layers) == 4
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert len(file_sha256(path)) == 64


def test_config_from_dict_and_demo_model():
    config = BEATsConfig.from_dict({**DEMO.to_dict(), "unknown_key": "ignored"})
    assert config == DEMO
    model = load_beats(None, config=DEMO.to_dict())
    with torch.no_grad():
        output, mask, hidden = model.forward_fbank(torch.randn(2, 100, 128), output_layers=True)
    assert output.shape == (2, 6 * 8, 96) and mask is None and len(hidden) == 5
    with pytest.raises(AsdError, match="gru_rel_pos"):
        BEATs(dataclasses.replace(DEMO, gru_rel_pos=False))
    with pytest.raises(AsdError, match="num_layers"):
        BEATs(DEMO, num_layers=5)


def test_layer_wise_gradient_decay_scales_earlier_layers():
    """Reference training behaviour: each block boundary multiplies the gradient by the decay ratio."""
    decayed = BEATs(DEMO)  # ratio 0.6
    plain = BEATs(dataclasses.replace(DEMO, layer_wise_gradient_decay_ratio=1.0))
    plain.load_state_dict(decayed.state_dict())
    features = torch.randn(1, 64, 128)
    for model in (decayed, plain):
        model.forward_fbank(features)[0].square().sum().backward()
    last, first = decayed.encoder.layers[-1].fc1.weight, decayed.encoder.layers[0].fc1.weight
    torch.testing.assert_close(last.grad, plain.encoder.layers[-1].fc1.weight.grad)
    torch.testing.assert_close(first.grad, plain.encoder.layers[0].fc1.weight.grad * 0.6**3, rtol=1e-4, atol=1e-9)


def test_fully_padded_clip_stays_finite(tiny, expected):
    features = torch.from_numpy(expected["fbank"][:1])
    with torch.no_grad():
        output, token_mask = tiny.forward_fbank(features, torch.ones(1, 998, dtype=torch.bool))
    assert token_mask.all() and torch.isfinite(output).all()


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return torch.load(TINY_CKPT, weights_only=True)


def test_wrong_shape_checkpoint_names_file_and_keys(tiny_state, tmp_path):
    model = dict(tiny_state["model"])
    model["encoder.layers.2.fc1.weight"] = torch.zeros(100, 64)
    path = tmp_path / "resized.pt"
    torch.save({"cfg": tiny_state["cfg"], "model": model}, path)
    with pytest.raises(AsdError) as error:
        load_beats(path)
    message = str(error.value)
    assert str(path) in message and "encoder.layers.2.fc1.weight expected [128, 64] found [100, 64]" in message
    assert "microsoft/unilm" in message


def test_missing_and_unexpected_keys_are_listed(tiny_state):
    model = {key: value for key, value in tiny_state["model"].items() if key != "layer_norm.bias"}
    model["extra.weight"] = torch.zeros(1)
    with pytest.raises(AsdError, match=r"my\.pt.*missing keys \(1\): layer_norm\.bias.*unexpected keys \(1\): extra\.weight"):
        adapt_checkpoint({"cfg": tiny_state["cfg"], "model": model}, source="my.pt")
    # Fine-tuning head weights and blocks beyond num_layers are dropped, not reported.
    config, weights = adapt_checkpoint(
        {"cfg": tiny_state["cfg"], "model": {**tiny_state["model"], "predictor.weight": torch.zeros(527, 64)}},
        num_layers=2,
    )
    assert config.encoder_layers == 6 and not any(k.startswith(("predictor.", "encoder.layers.2.")) for k in weights)


def test_unreadable_files_name_the_file(tiny_state, tmp_path):
    no_cfg = tmp_path / "no_cfg.pt"
    torch.save({"model": tiny_state["model"]}, no_cfg)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(TINY_CKPT.read_bytes()[:100_000])
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("this is not a checkpoint\n")
    for path in (no_cfg, truncated, not_torch, tmp_path / "absent.pt"):
        with pytest.raises(AsdError, match=path.name):
            load_beats(path)
    with pytest.raises(AsdError, match="absent.pt"):
        file_sha256(tmp_path / "absent.pt")


def test_fft_position_conv_equals_grouped_conv1d_and_cache_follows_weights():
    from asd.model.beats import _WeightNormConv1d

    torch.manual_seed(0)
    conv = _WeightNormConv1d(32, 16, 4, init_std=0.1)
    x = torch.randn(2, 50, 32)

    def direct(module):  # the reference: weight-normalised grouped Conv1d, padding K//2, first N steps
        weight = module.weight_v * (module.weight_g / module._norm(module.weight_v))
        out = torch.nn.functional.conv1d(x.transpose(1, 2), weight, module.bias, padding=8, groups=4)
        return out[..., :50].transpose(1, 2)

    with torch.no_grad():
        assert torch.allclose(conv(x), direct(conv), atol=1e-5)
        conv.weight_g.mul_(2.0)  # an in-place edit must invalidate the cached kernel spectrum
        assert torch.allclose(conv(x), direct(conv), atol=1e-5)
        other = _WeightNormConv1d(32, 16, 4, init_std=0.1)
        conv.load_state_dict(other.state_dict())
        assert torch.allclose(conv(x), direct(other), atol=1e-5)
