"""arc_fast.audio: the one reader (channel rule: remix), the resampler (soxr, torch fallback), the writer."""
import math
import os
import sys

import numpy as np
import pytest
import torch

from arc_fast import audio as A


def tone(freq, sr, n, channels=1, amp=0.5):
    t = torch.arange(n, dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float().expand(channels, n).clone()


def level_db(y, freq, sr):
    """Amplitude (dB re 1) of ``freq`` in y (samples,), least-squares fit away from the edges."""
    y = y.double()[len(y) // 10: -len(y) // 10]
    t = torch.arange(len(y), dtype=torch.float64) / sr
    basis = torch.stack([torch.sin(2 * math.pi * freq * t), torch.cos(2 * math.pi * freq * t)], 1)
    c = torch.linalg.lstsq(basis, y[:, None]).solution[:, 0]
    return 20 * math.log10(float(c.norm()) + 1e-300)


def test_resample_48k_to_44k1_rejects_alias_and_keeps_the_passband():
    """The figures in arc_fast.audio's docstring: a 23 kHz tone (folding to 21.1 kHz) is removed, 1 kHz and
    20 kHz pass; the torch fallback is far weaker on the alias, which is why soxr is the default."""
    above = A.resample(tone(23000, 48000, 48000), 48000, 44100)[0]
    assert above.shape == (44100,) and level_db(above, 44100 - 23000, 44100) < -100
    for f in (1000, 20000):
        assert abs(level_db(A.resample(tone(f, 48000, 48000), 48000, 44100)[0], f, 44100) - level_db(
            tone(f, 44100, 44100)[0], f, 44100)) < 0.05
    assert level_db(A.resample_sinc(tone(23000, 48000, 48000), 48000, 44100)[0], 21100, 44100) > -100


@pytest.mark.parametrize("n,orig,new", [(1, 48000, 44100), (7, 48000, 44100), (1001, 22050, 8000),
                                        (1000, 44101, 44100), (333, 8000, 44100)])
def test_resample_length_shape_dtype_follow_the_contract(n, orig, new):
    x = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = A.resample(x, orig, new)
    assert y.shape == (2, 3, -(-n * new // orig)) and y.dtype == torch.float64
    assert y.shape == A.resample_sinc(x, orig, new).shape
    torch.testing.assert_close(A.resample(x[1, 2], orig, new), y[1, 2], rtol=0, atol=1e-6)  # rows independent


def test_resample_falls_back_to_torch_without_soxr(monkeypatch):
    x = tone(1000, 48000, 4800, channels=2)
    monkeypatch.setitem(sys.modules, "soxr", None)   # import soxr -> ImportError
    y = A.resample(x, 48000, 44100)
    assert torch.equal(y, A.resample_sinc(x, 48000, 44100))   # the fallback *is* resample_sinc: same call, same bytes
    monkeypatch.delitem(sys.modules, "soxr")
    torch.testing.assert_close(A.resample(x, 48000, 44100)[:, 200:-200], y[:, 200:-200], rtol=0, atol=2e-3)


def test_resample_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        A.resample(torch.zeros(3, dtype=torch.long), 1, 2)
    with pytest.raises(ValueError, match="positive"):
        A.resample(torch.zeros(3), 0, 2)
    x = torch.randn(2, 10)
    assert torch.equal(A.resample(x, 100, 100), x)


def _write(path, data, sr):
    import soundfile as sf
    sf.write(str(path), np.ascontiguousarray(data.T.numpy()), sr, subtype="FLOAT")


def test_read_audio_applies_the_one_channel_rule(tmp_path):
    six = torch.arange(6.0)[:, None].expand(6, 100).clone() / 10
    _write(tmp_path / "six.wav", six, 8000)
    # A float32 file round trip, then channel selection: the same values within float32 rounding.
    torch.testing.assert_close(A.read_audio(tmp_path / "six.wav", 8000, 2), six[:2])     # first channels kept
    stereo = torch.stack([torch.full((100,), 0.1), torch.full((100,), 0.3)])
    _write(tmp_path / "st.wav", stereo, 8000)
    torch.testing.assert_close(A.read_audio(tmp_path / "st.wav", 8000, 1), torch.full((1, 100), 0.2))  # averaged
    _write(tmp_path / "mono.wav", stereo[:1], 8000)
    torch.testing.assert_close(A.read_audio(tmp_path / "mono.wav", 8000, 3), stereo[:1].expand(3, 100))  # copied
    assert A.read_audio(tmp_path / "mono.wav", 16000, 2).shape == (2, 200)                         # resampled
    with pytest.raises(ValueError, match="8000 Hz, the model needs 16000 Hz"):
        A.read_audio(tmp_path / "mono.wav", 16000, 2, resample_ok=False)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        A.load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read audio file"):
        A.load_audio(tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="channels"):
        A.remix(stereo, 0)


def test_write_wav_is_16_bit_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out.wav"
    x = tone(440, 8000, 800, channels=2)
    A.write_wav(str(path), x, 8000)
    back, sr = A.load_audio(path)
    assert sr == 8000 and back.shape == (2, 800) and (back - x).abs().max() <= 2 ** -15
    before = path.read_bytes()
    import soundfile as sf

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sf, "write", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        A.write_wav(str(path), x * 0, 8000)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.wav"]   # old file intact, no temp left
