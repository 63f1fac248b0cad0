"""Training: loss falls, deterministic on CPU, and a SIGKILLed run resumes to identical checkpoints."""

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from asd.errors import AsdError
from asd.model.train import CRASH_AFTER_EPOCH, learning_rate, spec_augment, train_fold
from conftest import train_settings, write_fold


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
from asd.model.train import train_fold
settings = train_settings(epochs=3)
train_fold(fold="t", feature_paths={features!r}, checkpoint_paths=[{out!r} + f"/epoch_{{e}}.pt" for e in (1, 2, 3)],
           log_path={out!r} + "/train_log.csv", settings=settings)
"""


def kill_after_first_epoch(out, features) -> None:
    """Train 3 epochs in a child process that SIGKILLs itself right after epoch 1's state is saved."""
    script = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), features=[str(p) for p in features], out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], stderr=subprocess.DEVNULL, start_new_session=True,
                          env={**os.environ, CRASH_AFTER_EPOCH: "1"}, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert (out / ".state" / "last.pt").exists() and not (out / "epoch_2.pt").exists()


def test_sigkill_mid_training_resumes_to_identical_checkpoints(tmp_path, synthetic_fold, caplog):
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_ckpts, ref_log = run_training(reference, synthetic_fold, epochs=3)
    assert not (reference / ".state").exists()  # a completed run keeps no resume state
    out = tmp_path / "killed"
    out.mkdir()
    kill_after_first_epoch(out, synthetic_fold)
    (out / "epoch_1.pt").unlink()  # as Snakemake --rerun-incomplete would: the state dir brings it back
    with caplog.at_level("INFO", logger="asd.model.train"):
        ckpts, log = run_training(out, synthetic_fold, epochs=3)
    assert "resuming after epoch 1" in caplog.text
    assert all(states_equal(a, b) for a, b in zip(ref_ckpts, ckpts))
    assert log["loss"].tolist() == pytest.approx(ref_log["loss"].tolist(), abs=0)


def test_changed_features_or_a_completed_run_train_from_scratch(tmp_path, synthetic_fold, caplog):
    # Interrupted with 2 s clips, rerun on 1.5 s clips (audio.clip_seconds changed): nothing is resumed.
    out = tmp_path / "run"
    out.mkdir()
    kill_after_first_epoch(out, synthetic_fold)
    shorter = write_fold(tmp_path / "short", seconds=1.5)
    with caplog.at_level("INFO", logger="asd.model.train"):
        ckpts, _ = run_training(out, shorter, epochs=3)
    assert "belongs to another configuration; training from scratch" in caplog.text
    assert "resuming" not in caplog.text
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_ckpts, _ = run_training(fresh, shorter, epochs=3)
    assert all(states_equal(a, b) for a, b in zip(ckpts, fresh_ckpts))
    reference = tmp_path / "reference"
    reference.mkdir()
    assert not states_equal(run_training(reference, synthetic_fold, epochs=3)[0][-1], ckpts[-1])
    # A completed run (then --forcerun, or any rerun of the rule) trains from scratch too.
    caplog.clear()
    with caplog.at_level("INFO", logger="asd.model.train"):
        run_training(out, shorter, epochs=3)
    assert "resuming" not in caplog.text and not (out / ".state").exists()


def test_nan_loss_stops_with_message(tmp_path, synthetic_fold):
    with pytest.raises(AsdError, match=r"loss became (nan|inf|-inf) at epoch \d+, step \d+.*Lower train.learning_rate"):
        run_training(tmp_path, synthetic_fold, epochs=3, learning_rate=1e30)


def test_schedule_and_specaugment():
    lrs = [learning_rate(s, total=100, warmup=10, peak=1e-4) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[9] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-4) and lrs[-1] < 1e-6
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    floored = [learning_rate(s, total=100, warmup=10, peak=1e-4, floor=0.1) for s in range(101)]
    assert floored[9] == pytest.approx(1e-4) and floored[100] == pytest.approx(1e-5) and min(floored[10:]) >= 1e-5
    x = torch.ones(64, 300, 128)
    valid = torch.full((64,), 200)
    out = spec_augment(x, valid, time_mask=80, freq_mask=24, generator=torch.Generator().manual_seed(0))
    masked_frames = (out == 0).all(dim=2).sum(dim=1)
    masked_bins = (out == 0).all(dim=1).sum(dim=1)
    assert masked_frames.max() <= 80 and masked_bins.max() <= 24 and masked_frames.float().mean() > 20
    assert ((out == 0).all(dim=2)[:, 200:]).sum() == 0  # time masks stay inside the real frames
