"""The procedural dataset (seeded, held-out combinations, captions parse back) and the analytic eval measures."""
import numpy as np
import pytest
import torch

from arc_fast.data import synthetic as S
from arc_fast.eval import metrics as M


def test_clips_are_reproducible_and_seed_dependent():
    a, b = S.make_clip(3, 7), S.make_clip(3, 7)
    assert a.caption == b.caption and np.array_equal(a.audio, b.audio)
    c = S.make_clip(4, 7)
    assert not np.array_equal(a.audio, c.audio)
    assert a.audio.shape == (2, S.WINDOW) and a.audio.dtype == np.float32


def test_clip_layout_sound_then_silence():
    for i in range(12):
        c = S.make_clip(0, i)
        n = int(round(c.seconds * S.SAMPLE_RATE))
        assert S.MIN_SECONDS <= c.seconds <= S.WINDOW / S.SAMPLE_RATE
        assert np.abs(c.audio[:, n:]).max() == 0.0
        assert 0.2 < np.abs(c.audio).max() <= 1.0
        assert np.isfinite(c.audio).all()


def test_heldout_split_is_disjoint_from_train():
    train = {S.make_clip(0, i).caption for i in range(300)}
    held = {S.make_clip(0, i, "heldout").caption for i in range(40)}
    assert held and not (held & train)
    assert all(S.is_heldout(S.make_clip(0, i, "heldout").params) for i in range(10))
    assert set(S.HELDOUT_PROMPTS) <= {S.caption(h if h["family"] != "tone" else {**h, "mod": None})
                                      for h in S.HELDOUT}


def test_every_family_appears_and_captions_are_distinct_per_params():
    fams = {S.make_clip(1, i).params["family"] for i in range(200)}
    assert fams == set(S.FAMILIES)
    caps = [S.caption(p) for p in S.enumerate_params()]
    assert len(caps) == len(set(caps))
    for p in S.enumerate_params():
        assert S.params_for_caption(S.caption(p)) == p
    assert S.params_for_caption("a purple elephant") is None


@pytest.mark.parametrize("wave", S.WAVES)
@pytest.mark.parametrize("pitch", [110, 220, 880])
def test_tone_pitch_is_measured_back(wave, pitch):
    c = S.make_clip(0, 0, params={"family": "tone", "wave": wave, "pitch": pitch, "mod": None})
    f0 = M.estimate_f0(c.audio[:, :44100])
    assert M.cents(f0, pitch) < 10


@pytest.mark.parametrize("tempo", ["slow", "medium", "fast"])
def test_rhythm_onset_rate_is_measured_back(tempo):
    c = S.make_clip(0, 1, params={"family": "rhythm", "pattern": "hi-hat pattern", "tempo": tempo})
    on = M.onset_times(c.audio)
    rate = 1 / np.median(np.diff(on))
    target = S.describe(c.caption)["onset_rate"]
    assert abs(rate - target) / target < 0.05


def test_describe_parses_targets():
    assert S.describe("a low sine tone at 220 Hz") == {"family": "tone", "f0": 220.0, "onset_rate": None}
    d = S.describe("a fast hi-hat pattern at 160 bpm")
    assert d["family"] == "rhythm" and d["onset_rate"] == pytest.approx(160 / 60 * 2)
    assert S.describe("a minor chord on C")["f0"] == pytest.approx(261.63)
    assert S.describe("something else")["family"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        S.make_clip(0, 0, split="valid")
    with pytest.raises(ValueError, match="window"):
        S.make_clip(0, 0, window=1000)
    with pytest.raises(ValueError, match="family"):
        S.sample_params(np.random.default_rng(0), "banjo")


def test_dataset_and_collate():
    ds = S.SyntheticDataset(5, seed=2)
    batch = ds.collate([ds[i] for i in range(3)])
    assert batch["audio"].shape == (3, 2, S.WINDOW) and len(batch["prompts"]) == 3
    assert torch.equal(ds[1]["audio"], torch.from_numpy(S.make_clip(2, 1).audio))
    with pytest.raises(IndexError):
        ds[5]


def test_metrics_on_known_inputs():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, a + 3.0) == pytest.approx(4 * 9.0, rel=1e-6)
    same = np.ones((4, 3))
    assert M.pairwise_diversity(same) == pytest.approx(0.0, abs=1e-9)
    assert M.pairwise_diversity(np.array([[1.0, 0], [0, 1.0]])) == pytest.approx(1.0)
    assert np.isnan(M.estimate_f0(np.zeros(4096)))
    assert M.cents(float("nan"), 220) == float("inf")
    assert M.cents(440, 220) == pytest.approx(1200)


def test_tones_and_chords_are_retriggered_at_phase_zero():
    # Same parameters, different clips: the waveforms differ in level, pan and length but start in phase
    # (the property that lets a hop-32 latent carry pitch as a first-order signal; see render()).
    for params in ({"family": "tone", "wave": "sine", "pitch": 220, "mod": None},
                   {"family": "chord", "quality": "major", "root": "A"}):
        a, b = (S.make_clip(0, i, params=params).audio[0, :4410].astype(np.float64) for i in (1, 2))
        assert float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99
