"""Epoch scoring from files: bank JSON -> KNN scores, with every scoring option, and ensembles."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from asd.scoring.ensemble import fuse_epochs
from asd.scoring.score import score_epoch, write_bank
from asd.store import read_scores, write_manifest_group

DECISION = {"quantile": 0.9}


def write_embeddings(path, *, seed=0, shift=0.0, epoch=1):
    """Source/target training clusters, clean + noise supplemental clips, normal and anomalous test clips."""
    rng = np.random.default_rng(seed)
    centre = {"source": np.eye(16)[0] * 4, "target": np.eye(16)[1] * 4}
    rows, vectors = [], []
    def add(n, split, domain, label, centre_vec, kind=""):
        for i in range(n):
            rows.append(dict(split=split, file=f"{split}_{domain}_{label}_{kind}{len(rows):04d}.wav", domain=domain,
                             label=label, attributes="noAttribute", supplemental_kind=kind))
            vectors.append(centre_vec + rng.normal(0, 0.3, 16) + shift)
    add(30, "train", "source", "normal", centre["source"])
    add(5, "train", "target", "normal", centre["target"])
    add(6, "supplemental", "source", "normal", centre["source"], kind="machine")
    add(6, "supplemental", "unknown", "unknown", np.eye(16)[5] * 4, kind="noise")
    for domain in ("source", "target"):
        add(10, "test", domain, "normal", centre[domain])
        add(10, "test", domain, "anomaly", centre[domain] + np.eye(16)[2] * 3)
    manifest = pd.DataFrame(rows)
    with h5py.File(path, "w") as h5:
        h5["embeddings"] = np.asarray(vectors, np.float32)
        h5["spectrum"] = np.asarray(vectors, np.float32)
        write_manifest_group(h5.create_group("manifest"), manifest)
        h5.attrs.update(epoch=epoch, backbone="random-init backbone (no pre-trained weights)", complete=True)
    return manifest


@pytest.mark.parametrize("separate, normalise", [(True, False), (True, True), (False, False), (False, True)])
def test_score_epoch_options(tmp_path, separate, normalise):
    emb, bank, out = tmp_path / "e.h5", tmp_path / "b.json", tmp_path / "s.csv"
    write_embeddings(emb)
    write_bank(embeddings_path=str(emb), out_path=str(bank), machine="fan", kind_override=None, use_supplemental=True)
    composition = json.loads(bank.read_text())
    assert composition["counts"] == {"train_source": 30, "train_target": 5, "supplemental_machine": 6,
                                     "supplemental_excluded": 6, "source_bank": 36, "target_bank": 5}
    scoring = {"k": 1, "separate_domain_banks": separate, "domain_normalisation": normalise}
    score_epoch(embeddings_path=str(emb), bank_path=str(bank), out_path=str(out), machine="fan", scoring=scoring,
                decision=DECISION)
    table = read_scores(str(out))
    test, banked = table[table.role == "test"], table[table.role == "bank"]
    assert len(test) == 40 and len(banked) == 41 and not banked["file"].str.contains("noise").any()
    assert roc_auc_score(test["label"] == "anomaly", test["score"]) > 0.95
    assert set(table["decision"]) <= {0, 1} and test.loc[test.label == "anomaly", "decision"].mean() > 0.8
    if separate:
        assert {"score_source", "score_target"} <= set(table.columns)
        assert np.allclose(test["score"], test[["score_source", "score_target"]].min(axis=1))
    else:
        assert "score_all" in table.columns


def test_ensemble_of_one_epoch_is_the_z_normalised_epoch_and_fusion_averages(tmp_path):
    paths = []
    for epoch, shift in ((1, 0.0), (2, 0.5)):
        emb, bank, out = tmp_path / f"e{epoch}.h5", tmp_path / f"b{epoch}.json", tmp_path / f"s{epoch}.csv"
        write_embeddings(emb, seed=epoch, shift=shift, epoch=epoch)
        write_bank(embeddings_path=str(emb), out_path=str(bank), machine="fan", kind_override=None, use_supplemental=True)
        score_epoch(embeddings_path=str(emb), bank_path=str(bank), out_path=str(out), machine="fan",
                    scoring={"k": 1, "separate_domain_banks": True, "domain_normalisation": False}, decision=DECISION)
        paths.append(str(out))
    fuse_epochs(score_paths=paths[:1], epochs=[1], out_path=str(tmp_path / "one.csv"), machine="fan", decision=DECISION)
    fuse_epochs(score_paths=paths, epochs=[1, 2], out_path=str(tmp_path / "two.csv"), machine="fan", decision=DECISION)
    epochs = [read_scores(p).set_index(["role", "file"])["score"] for p in paths]
    z = [(s - s.xs("bank").mean()) / s.xs("bank").std(ddof=0) for s in epochs]
    one = read_scores(str(tmp_path / "one.csv")).set_index(["role", "file"])["score"]
    two = read_scores(str(tmp_path / "two.csv")).set_index(["role", "file"])["score"]
    assert np.allclose(one, z[0].loc[one.index])
    assert np.allclose(two, ((z[0] + z[1]) / 2).loc[two.index])
    assert abs(one.xs("bank").mean()) < 1e-9  # training statistics only: the bank rows are centred
