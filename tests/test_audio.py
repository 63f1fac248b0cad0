"""asd.data.audio: loading real and malformed WAVs, channel policies, header probing."""

import numpy as np
import pytest
import soundfile as sf

from asd.data.audio import load_audio, probe_audio
from asd.errors import AsdError
from conftest import SHARED

REAL_AUDIO = SHARED / "real-audio"
FAN_CLIP = REAL_AUDIO / "dcase2023-dev-samples/fan/train/section_00_source_train_normal_0040_m-n_X.wav"
MIMII_8CH = REAL_AUDIO / "other-formats/mimii-8ch/valve_id00_n_00000000.wav"
needs_real_audio = pytest.mark.skipif(not REAL_AUDIO.is_dir(), reason="shared real-audio clips not present")


@needs_real_audio
def test_real_clip_loads_as_float32_mono_matching_soundfile():
    samples = load_audio(FAN_CLIP)
    reference, rate = sf.read(FAN_CLIP, dtype="float32")
    assert samples.dtype == np.float32 and samples.shape == (160000,)
    assert rate == 16000
    np.testing.assert_array_equal(samples, reference)
    assert probe_audio(FAN_CLIP) == (16000, 1, 160000)


@needs_real_audio
def test_eight_channel_mimii_refused_by_default_and_downmixed_on_request():
    with pytest.raises(AsdError, match=r"8 channels.*channel_policy: mean"):
        load_audio(MIMII_8CH)
    channels, _ = sf.read(MIMII_8CH, dtype="float32")  # [samples, 8]
    assert channels.shape == (160000, 8)
    np.testing.assert_allclose(load_audio(MIMII_8CH, channel_policy="mean"), channels.mean(axis=1), atol=1e-7)
    np.testing.assert_array_equal(load_audio(MIMII_8CH, channel_policy="first"), channels[:, 0])
    assert probe_audio(MIMII_8CH) == (16000, 8, 160000)


def test_wrong_sample_rate_names_file_and_fix(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(2205), 22050, subtype="PCM_16")
    with pytest.raises(AsdError, match=r"clip\.wav.*22050 Hz.*resample.*16 kHz.*audio\.sample_rate"):
        load_audio(path)
    assert load_audio(path, sample_rate=22050).shape == (2205,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: sf.write(path, np.zeros(0), 16000, subtype="PCM_16"), "holds no samples"),
        (lambda path: path.write_bytes(b""), "cannot read it as audio"),
        (lambda path: path.write_bytes(bytes(range(256)) * 4), "cannot read it as audio"),
        (lambda path: sf.write(path, np.zeros(100), 16000, format="FLAC"), "is FLAC.*not WAV"),
        (lambda path: None, "cannot read it as audio"),  # missing file
    ],
    ids=["empty", "zero-bytes", "garbage", "flac", "missing"],
)
def test_unusable_files_raise_asd_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AsdError, match=rf"bad\.wav.*{message}"):
        load_audio(path)


def test_unknown_channel_policy_is_refused(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(160), 16000, subtype="PCM_16")
    with pytest.raises(AsdError, match="channel_policy.*refuse, mean, first"):
        load_audio(path, channel_policy="left")
