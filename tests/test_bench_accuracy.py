"""bench/accuracy.py's backbone-stage probe: one vector per clip and stage, blind to what padding holds."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from asd.data.features import FeatureSet
from asd.model.beats import DEMO, BEATs
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import accuracy  # noqa: E402

SAMPLE_RATE, SECONDS = 16000, 2.0


def feature_set(fbank: np.ndarray, num_samples: list[int]) -> FeatureSet:
    manifest = pd.DataFrame({"file": [f"clip_{i}.wav" for i in range(len(fbank))], "split": "train"})
    return FeatureSet(fbank=fbank, num_samples=np.array(num_samples), manifest=manifest, sample_rate=SAMPLE_RATE,
                      clip_seconds=SECONDS)


@pytest.fixture(scope="module")
def backbone() -> BEATs:
    torch.manual_seed(0)
    return BEATs(DEMO).eval()


def test_every_stage_gives_mean_and_std_of_each_time_patch_vector(backbone):
    fbank = np.random.default_rng(0).normal(size=(3, 198, 128)).astype(np.float32)
    stages = accuracy.backbone_stages(backbone, feature_set(fbank, [32000] * 3), batch_size=2)
    assert list(stages) == ["patch embedding", "patch embedding + LayerNorm", "block 1", "block 2", "block 3", "block 4"]
    frequency_patches = 128 // DEMO.input_patch_size
    assert stages["patch embedding"].shape == (3, 2 * frequency_patches * DEMO.embed_dim)
    assert stages["block 4"].shape == (3, 2 * frequency_patches * DEMO.encoder_embed_dim)
    # block 4 is the frozen backbone's output, regrouped per time patch: its mean over time, per token slot
    tokens, _ = backbone.forward_fbank(torch.from_numpy(fbank))  # [3, 12 * 8, C]
    per_time_patch = tokens.reshape(3, -1, frequency_patches * DEMO.encoder_embed_dim)
    np.testing.assert_allclose(stages["block 4"][:, :per_time_patch.shape[2]], per_time_patch.mean(1).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_what_the_padding_holds_never_reaches_a_stage(backbone):
    rng = np.random.default_rng(1)
    fbank = rng.normal(size=(2, 198, 128)).astype(np.float32)
    garbage = fbank.copy()
    # clip 0 is 1 s long: from frame 112 on (time patch 7) every time patch holds padding only
    garbage[0, 112:] = rng.normal(scale=50.0, size=(86, 128))
    clean_stages = accuracy.backbone_stages(backbone, feature_set(fbank, [16000, 32000]))
    garbage_stages = accuracy.backbone_stages(backbone, feature_set(garbage, [16000, 32000]))
    for stage in clean_stages:
        np.testing.assert_allclose(garbage_stages[stage], clean_stages[stage], rtol=1e-4, atol=1e-4, err_msg=stage)
    assert not np.allclose(clean_stages["block 4"][0], clean_stages["block 4"][1])  # and the clips still differ
