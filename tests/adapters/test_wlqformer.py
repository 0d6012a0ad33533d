"""WLQ-Former adapter: window size from seconds, output lengths, windows are independent."""

from __future__ import annotations

import pytest
import torch

from speechwire.adapters import AdapterContext
from speechwire.adapters.wlqformer import WLQFormerAdapter, window_frames
from speechwire.config import AdapterConfig

from helpers import D_LLM, make_frames, tiny_adapter


def test_window_frames():
    assert window_frames(0.333, 50.0) == 17  # Whisper: 16.65 -> 17
    assert window_frames(0.333, 6.25) == 2  # Seamless: 2.08 -> 2
    assert window_frames(0.333, 1.0) == 1  # never below one frame


def test_output_lengths_by_hand():
    # window_seconds 0.1 at 50 Hz -> 5 frames; 2 queries per window
    adapter = tiny_adapter("wlqformer", window_seconds=0.1, queries_per_window=2).eval()
    assert adapter.window == 5
    x, lens = make_frames([40, 21, 5, 1])
    out = adapter(x, lens)
    assert out.lengths.tolist() == [16, 10, 2, 2]  # ceil(n / 5) * 2
    assert out.embeds.shape == (4, 16, D_LLM)
    assert adapter.output_length(torch.tensor([500])).tolist() == [200]
    # the paper's setting on Whisper: 10 s = 500 frames, 17-frame windows, 1 query -> 30 outputs
    assert tiny_adapter("wlqformer").output_length(torch.tensor([500])).tolist() == [30]


def test_windows_are_independent():
    """Perturbing the frames of one window changes only that window's outputs."""
    adapter = tiny_adapter("wlqformer", window_seconds=0.1, queries_per_window=2).eval()
    x, lens = make_frames([23], seed=5)  # windows of 5 frames: 4 full + a partial one of 3
    with torch.no_grad():
        ref = adapter(x, lens).embeds.view(1, 5, 2, D_LLM)
        for w in range(5):
            y = x.clone()
            y[0, w * 5 : min(23, w * 5 + 5)] += torch.randn(min(23, w * 5 + 5) - w * 5, x.shape[-1])
            out = adapter(y, lens).embeds.view(1, 5, 2, D_LLM)
            changed = (out - ref).abs().amax(dim=(0, 2, 3)) > 1e-6  # (windows,)
            assert changed.tolist() == [i == w for i in range(5)]


def test_last_partial_window_ignores_padding():
    adapter = tiny_adapter("wlqformer", window_seconds=0.1).eval()
    x, lens = make_frames([7, 12], seed=6)
    with torch.no_grad():
        a = adapter(x, lens).embeds
        x[0, 7:] = 1e3
        b = adapter(x, lens).embeds
    torch.testing.assert_close(a, b)


def test_needs_a_frame_rate():
    with pytest.raises(ValueError, match="frame_rate"):
        WLQFormerAdapter(AdapterConfig(name="wlqformer"), AdapterContext(16, 24, frame_rate=0.0))
