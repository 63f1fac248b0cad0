"""Training: loss falls, deterministic on CPU, and a SIGKILLed run resumes to identical checkpoints."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from asd.errors import AsdError
from asd.train import learning_rate, spec_augment, train_fold
from conftest import train_settings


def run_training(tmp, features, **train):
    settings = train_settings(**train)
    ckpts = [str(tmp / f"epoch_{e}.pt") for e in range(1, settings["train"]["epochs"] + 1)]
    train_fold(fold="t", feature_paths=[str(p) for p in features], checkpoint_paths=ckpts,
               log_path=str(tmp / "train_log.csv"), settings=settings)
    return ckpts, pd.read_csv(tmp / "train_log.csv")


def states_equal(a, b):
    sa, sb = torch.load(a, weights_only=True)["state"], torch.load(b, weights_only=True)["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_falls_accuracy_rises_and_runs_are_deterministic(tmp_path, synthetic_fold):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ckpts_a, log_a = run_training(tmp_path / "a", synthetic_fold, epochs=15, learning_rate=3e-3)
    ckpts_b, log_b = run_training(tmp_path / "b", synthetic_fold, epochs=15, learning_rate=3e-3)
    assert log_a["loss"].iloc[-1] < 0.7 * log_a["loss"].iloc[0]
    assert log_a["accuracy"].iloc[-1] > log_a["accuracy"].iloc[0]
    assert list(log_a["epoch"]) == list(range(1, 16))
    assert (log_a["backbone"] == "random-init backbone (no pre-trained weights)").all()
    assert log_a["loss"].tolist() == log_b["loss"].tolist()
    assert all(states_equal(a, b) for a, b in zip(ckpts_a, ckpts_b))


RESUME_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
from conftest import train_settings
from asd.train import train_fold
settings = train_settings(epochs=3)
train_fold(fold="t", feature_paths={features!r}, checkpoint_paths=[{out!r} + f"/epoch_{{e}}.pt" for e in (1, 2, 3)],
           log_path={out!r} + "/train_log.csv", settings=settings)
"""


def test_sigkill_mid_training_resumes_to_identical_checkpoints(tmp_path, synthetic_fold):
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_ckpts, ref_log = run_training(reference, synthetic_fold, epochs=3)
    out = tmp_path / "killed"
    out.mkdir()
    script = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), features=[str(p) for p in synthetic_fold],
                                  out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "epoch_1.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the fixture bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "epoch_3.pt").exists()
    (out / "epoch_1.pt").unlink()  # as Snakemake --rerun-incomplete would: the state dir brings it back
    ckpts, log = run_training(out, synthetic_fold, epochs=3)
    assert all(states_equal(a, b) for a, b in zip(ref_ckpts, ckpts))
    assert log["loss"].tolist() == pytest.approx(ref_log["loss"].tolist(), abs=0)


def test_nan_loss_stops_with_message(tmp_path, synthetic_fold):
    with pytest.raises(AsdError, match=r"loss became (nan|inf|-inf) at epoch \d+, step \d+.*Lower train.learning_rate"):
        run_training(tmp_path, synthetic_fold, epochs=3, learning_rate=1e30)


def test_schedule_and_specaugment():
    lrs = [learning_rate(s, total=100, warmup=10, peak=1e-4) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[9] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-4) and lrs[-1] < 1e-6
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    x = torch.ones(64, 300, 128)
    valid = torch.full((64,), 200)
    out = spec_augment(x, valid, time_mask=80, freq_mask=24, generator=torch.Generator().manual_seed(0))
    masked_frames = (out == 0).all(dim=2).sum(dim=1)
    masked_bins = (out == 0).all(dim=1).sum(dim=1)
    assert masked_frames.max() <= 80 and masked_bins.max() <= 24 and masked_frames.float().mean() > 20
    assert ((out == 0).all(dim=2)[:, 200:]).sum() == 0  # time masks stay inside the real frames
