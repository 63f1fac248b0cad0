"""The automatic noise-only test on the embedded demo dataset: every supplemental clip is judged right.

It compares each clip's gain-invariant mean log-mel spectrum (what the embed step stores) with the
training clips', so the verdict does not depend on the model or the epoch.
"""

import numpy as np
import pytest

from asd.scoring.bank import build_bank
from asd.data.dataset import build_manifest
from asd.data.demo import generate_demo
from asd.model.embed import mean_spectrum
from asd.data.features import cache_features, load_features


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    info = generate_demo(root / "dcase", seed=0, scale="demo")
    features = {}
    for dataset, data_root in (("dev", info["dev_root"]), ("eval", info["eval_root"])):
        manifest = build_manifest(data_root, dataset=dataset)
        for machine in sorted(set(manifest["machine"])):
            path = root / "features" / f"{machine}.h5"
            cache_features(manifest=manifest, machine=machine, out_path=path, sample_rate=16000,
                           channel_policy="refuse", clip_seconds=10.0, dtype="float16")
            features[machine] = load_features(path)
    return info, features


def test_every_demo_supplemental_clip_is_classified_right(demo_features):
    info, features = demo_features
    truth = info["supplemental_content"]  # machine type -> what its supplemental clips really are
    assert set(truth.values()) == {"machine", "noise"} and len(truth) == 6
    for machine, fs in features.items():
        spectrum = mean_spectrum(fs.fbank, fs.frame_padding_mask().numpy())
        # "auto": ignore what the names say and judge every clip by the automatic test alone
        bank = build_bank(fs.manifest, np.zeros((len(fs.manifest), 4), np.float32), name=machine,
                          kind_override="auto", test_features=spectrum)
        n_supp = int((fs.manifest["split"] == "supplemental").sum())
        kept = bank.composition["counts"]["supplemental_machine"]
        assert kept == (n_supp if truth[machine] == "machine" else 0), (machine, bank.composition["supplemental"])
        assert all("automatic test" in e["reason"] for e in bank.composition["excluded"])
        # Both signs agree on the demo: noise-only sets lack the machine's spectral peaks, machine sets carry them.
        test = bank.composition["supplemental"]["automatic_test"]
        assert test["peak_test"] == "run"
        shares = np.array(test["peak_shares"])
        assert (shares < 0.25).all() if truth[machine] == "noise" else (shares > 0.75).all(), (machine, shares)
