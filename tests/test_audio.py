"""audio.py on real files written to disk: formats, segments, resampling accuracy, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechwire.audio import AudioError, audio_info, load_audio, seconds_to_samples

from helpers import encode_with_ffmpeg as encode


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freq_amp(x: np.ndarray, sr: int) -> tuple[float, float]:
    """Frequency (Hz, FFT peak) and amplitude (sqrt(2) * RMS) of a pure sinusoid."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return int(np.argmax(spec)) * sr / len(x), float(np.sqrt(2 * np.mean(x.astype(np.float64) ** 2)))


def test_wav_8k_stereo_int16_downmix_and_resample(tmp_path):
    left, right = sine(440, 8000, 1.0, 0.6), sine(440, 8000, 1.0, 0.2)
    path = tmp_path / "a.wav"
    sf.write(path, np.stack([left, right], 1), 8000, subtype="PCM_16")
    assert audio_info(path) == (8000, 8000, 2, 1.0)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == 16000
    f, a = peak_freq_amp(wav[1000:-1000], 16000)
    assert abs(f - 440) < 2 and abs(a - 0.4) < 0.01  # mean of the two channels


@pytest.mark.parametrize("sr", [8000, 44100, 22050])
def test_resampling_keeps_frequency_and_amplitude(tmp_path, sr):
    path = tmp_path / "s.flac"
    sf.write(path, sine(440, sr, 2.0), sr, subtype="PCM_24")
    wav = load_audio(path)
    assert len(wav) == 32000
    f, a = peak_freq_amp(wav[2000:-2000], 16000)
    assert abs(f - 440) < 1.5 and abs(a - 0.5) < 0.01


def test_float_flac_44k_segment_reads_only_the_slice(tmp_path):
    sr = 44100
    x = np.zeros(sr * 3, np.float32)
    x[sr : 2 * sr] = sine(1000, sr, 1.0)  # tone only in second 1..2
    path = tmp_path / "b.flac"
    sf.write(path, x, sr)
    seg = load_audio(path, offset=1.0, duration=1.0)
    assert len(seg) == 16000
    f, a = peak_freq_amp(seg[500:-500], 16000)
    assert abs(f - 1000) < 2 and abs(a - 0.5) < 0.01
    tail = load_audio(path, offset=2.0)
    assert len(tail) == 16000 and np.abs(tail[200:]).max() < 0.01


def test_ogg_and_mp3(tmp_path):
    x = sine(440, 16000, 1.0)
    ogg = tmp_path / "c.ogg"
    sf.write(ogg, x, 16000)
    f, _ = peak_freq_amp(load_audio(ogg)[1000:-1000], 16000)
    assert abs(f - 440) < 2
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write mp3")
    mp3 = tmp_path / "d.mp3"
    sf.write(mp3, sine(440, 22050, 1.0), 22050, format="MP3")
    wav = load_audio(mp3)
    assert abs(len(wav) - 16000) < 1200
    f, a = peak_freq_amp(wav[2000:-2000], 16000)
    assert abs(f - 440) < 3 and abs(a - 0.5) < 0.05


def test_missing_corrupt_empty_nan(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match=r"bad\.wav: cannot decode audio.*ffmpeg"):
        load_audio(bad)
    with pytest.raises(AudioError, match="bad.wav"):
        audio_info(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: .*empty"):
        load_audio(empty)
    allnan = tmp_path / "nan.wav"
    sf.write(allnan, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: the audio contains only NaN/inf"):
        load_audio(allnan)
    some = np.zeros(1600, np.float32)
    some[5] = np.inf
    partnan = tmp_path / "inf.wav"
    sf.write(partnan, some, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"inf\.wav: the audio contains 1 NaN/inf of 1600"):
        load_audio(partnan)


def test_segment_and_length_errors(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, sine(440, 16000, 1.0), 16000)
    with pytest.raises(AudioError, match=r"offset 2\.000 s is beyond the end .*1\.000 s"):
        load_audio(path, offset=2.0)
    with pytest.raises(AudioError, match="runs past the end"):
        load_audio(path, offset=0.5, duration=1.0)
    assert len(load_audio(path, offset=0.5, duration=0.55)) == 8000  # within END_TOLERANCE
    with pytest.raises(AudioError, match="shorter than min_seconds=2"):
        load_audio(path, min_seconds=2)
    with pytest.raises(AudioError, match="longer than max_seconds=0.5"):
        load_audio(path, max_seconds=0.5)
    with pytest.raises(AudioError, match="must be >= 0"):
        load_audio(path, offset=-1)


def test_seconds_to_samples():
    assert seconds_to_samples(1.5, 16000) == 24000
    assert seconds_to_samples(0.00003, 16000) == 0


def test_split_long_cuts_at_pauses_and_keeps_every_sample():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from speechwire.audio import split_long

    sr = 16000
    rng = np.random.default_rng(0)
    speech = lambda s: (0.3 * rng.standard_normal(int(s * sr))).astype(np.float32)  # noqa: E731
    silence = lambda s: np.zeros(int(s * sr), np.float32)  # noqa: E731
    wav = np.concatenate([speech(8), silence(0.5), speech(3), speech(8), silence(0.4), speech(6)])  # 25.9 s
    pieces = split_long(wav, 10.0)
    assert np.array_equal(np.concatenate(pieces), wav)
    assert all(len(p) <= 10 * sr for p in pieces)
    assert abs(len(pieces[0]) / sr - 8.25) < 0.1  # cut inside the first pause
    assert split_long(wav[: 5 * sr], 10.0)[0] is not None and len(split_long(wav[: 5 * sr], 10.0)) == 1

    @settings(max_examples=30, deadline=None)
    @given(st.integers(1, 400), st.floats(0.5, 3.0))
    def prop(tenths, max_s):
        x = rng.standard_normal(tenths * sr // 10).astype(np.float32)
        parts = split_long(x, max_s)
        assert np.array_equal(np.concatenate(parts), x)
        assert all(0 < len(p) <= int(round(max_s * sr)) for p in parts)

    prop()


@pytest.mark.parametrize("codec, container, suffix, rate", [
    ("aac", "mp4", "m4a", 44100),        # a phone's voice memo
    ("libopus", "webm", "webm", 48000),  # a browser's MediaRecorder
    ("libopus", "ogg", "opus", 48000),   # a messenger's voice note
    ("alac", "mp4", "m4a", 44100),       # Apple lossless
])
def test_formats_only_ffmpeg_reads_are_converted(tmp_path, codec, container, suffix, rate):
    pytest.importorskip("av")
    path = tmp_path / f"memo.{suffix}"
    encode(path, codec, container, np.stack([sine(440, rate, 2.0, 0.6), sine(440, rate, 2.0, 0.2)]), rate)
    sr, frames, channels, seconds = audio_info(path)
    assert (sr, channels) == (rate, 2) and abs(seconds - 2.0) < 0.1 and frames == round(seconds * sr)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1 and abs(len(wav) - 32000) < 1600
    f, a = peak_freq_amp(wav[4000:-4000], 16000)
    assert abs(f - 440) < 2 and abs(a - 0.4) < 0.03  # the two channels' mean, through a lossy codec
    seg = load_audio(path, offset=0.5, duration=1.0)  # a manifest's segment: decoded whole, then cut
    assert len(seg) == 16000
    with pytest.raises(AudioError, match=rf"memo\.{suffix}: segment \[1\.500, 4\.500\] s runs past the end"):
        load_audio(path, offset=1.5, duration=3.0)


def test_what_ffmpeg_cannot_use_is_named(tmp_path):
    av = pytest.importorskip("av")
    memo = tmp_path / "memo.m4a"
    encode(memo, "aac", "mp4", sine(440, 44100, 1.0)[None], 44100)
    cut = tmp_path / "cut.m4a"  # an upload that stopped half way: the index at its end never arrived
    cut.write_bytes(memo.read_bytes()[: memo.stat().st_size // 2])
    with pytest.raises(AudioError, match=r"cut\.m4a: cannot decode audio .*m4a, aac, webm.*ffmpeg -i"):
        load_audio(cut)
    silent_film = tmp_path / "film.mp4"  # a container FFmpeg reads, with no sound in it
    with av.open(str(silent_film), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            image = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(image):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioError, match=r"film\.mp4: the file holds no audio stream \(only video\)"):
        audio_info(silent_film)
