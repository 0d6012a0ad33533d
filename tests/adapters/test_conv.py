"""Conv-based adapter: exact output lengths and the 4x reduction."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.adapters.conv import conv_output_length

from helpers import D_LLM, make_frames, tiny_adapter


def test_output_lengths_by_hand():
    # one layer, kernel 3, stride 2, padding 1: n -> ceil(n / 2)
    n = torch.tensor([1, 2, 3, 4, 5, 500])
    assert conv_output_length(n, 3, 2, 1).tolist() == [1, 1, 2, 2, 3, 250]
    # two layers: 40 -> 20 -> 10, 23 -> 12 -> 6, 5 -> 3 -> 2, 1 -> 1 -> 1, 500 -> 125
    adapter = tiny_adapter("conv").eval()
    x, lens = make_frames([40, 23, 5, 1])
    out = adapter(x, lens)
    assert out.lengths.tolist() == [10, 6, 2, 1]
    assert out.embeds.shape == (4, 10, D_LLM)
    assert adapter.output_length(torch.tensor([500])).tolist() == [125]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), kernel=st.sampled_from([3, 5]), stride=st.integers(1, 3))
def test_conv_output_length_matches_torch(n, kernel, stride):
    conv = torch.nn.Conv1d(1, 1, kernel, stride=stride, padding=kernel // 2)
    got = conv_output_length(torch.tensor([n]), kernel, stride, kernel // 2)
    assert int(got) == conv(torch.zeros(1, 1, n)).shape[-1]
    if (kernel, stride) == (3, 2):
        assert int(got) == math.ceil(n / 2)


def test_padded_frames_never_reach_real_outputs():
    adapter = tiny_adapter("conv").eval()
    x, lens = make_frames([9, 30])
    with torch.no_grad():
        a = adapter(x, lens).embeds
        x[0, 9:] = -1e4  # change only item 0's padding
        b = adapter(x, lens).embeds
    torch.testing.assert_close(a, b)


def test_layer_list_matches_the_authors_order():
    # speechlmm ConvolutionalAdapter (hidden_layers 0): conv(k3, s2) LN ReLU conv(k3, s2) LN
    paper = tiny_adapter("conv", conv_final_relu=False)
    assert [type(m).__name__ for m in paper.layer_list()] == ["Conv1d", "LayerNorm", "ReLU", "Conv1d", "LayerNorm"]
    assert [(m.kernel_size, m.stride, m.padding) for m in paper.layer_list()[::3]] == [((3,), (2,), (1,))] * 2
    ours = tiny_adapter("conv")  # default: a ReLU after the last conv too
    assert [type(m).__name__ for m in ours.layer_list()][-1] == "ReLU"
    # same weights, same state dict keys: only the activation differs, and forward uses it
    paper.load_state_dict(ours.state_dict())
    x, lens = make_frames([20])
    seen = {}
    hook = ours.stack.register_forward_pre_hook(lambda m, args: seen.__setitem__("ours", args[0]))
    hook2 = paper.stack.register_forward_pre_hook(lambda m, args: seen.__setitem__("paper", args[0]))
    ours.eval()(x, lens), paper.eval()(x, lens)
    hook.remove(), hook2.remove()
    assert (seen["ours"] >= 0).all() and (seen["paper"] < 0).any()
    torch.testing.assert_close(seen["ours"], seen["paper"].clamp(min=0))
