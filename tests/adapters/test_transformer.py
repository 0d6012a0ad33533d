"""The transformer stack and Q-Former layers: PyTorch's vs BERT's init, LayerNorm eps and dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechwire.adapters.transformer import bert_init_

from helpers import make_frames, tiny_adapter

BERT = dict(init_std=0.02, layer_norm_eps=1e-12, bert_dropout=True, dropout=0.1, hidden_size=64, ffn_size=256)


def _layers(adapter) -> nn.Module:
    return adapter.stack.layers if hasattr(adapter, "stack") else adapter.layers


@pytest.mark.parametrize("name", ["base", "wlqformer"])
def test_bert_style_switches(name):
    torch_style, bert = tiny_adapter(name, dropout=0.1, hidden_size=64, ffn_size=256), tiny_adapter(name, **BERT)
    assert torch_style.state_dict().keys() == bert.state_dict().keys()  # checkpoints fit either way
    norms = [m for m in _layers(bert).modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-12 for m in norms)
    assert all(m.eps == 1e-5 for m in _layers(torch_style).modules() if isinstance(m, nn.LayerNorm))
    # weights of the layers ~ normal(0, 0.02), biases 0; the projections keep PyTorch's init
    weights = torch.cat([p.detach().flatten() for n, p in _layers(bert).named_parameters()
                         if "norm" not in n and p.dim() == 2])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.002
    assert all(not p.any() for n, p in _layers(bert).named_parameters() if n.endswith("bias") and "norm" not in n)
    proj = bert.stack.in_proj[0].weight if name == "base" else bert.out_proj.weight
    assert float(proj.detach().std()) > 0.03
    # dropout: attention probabilities and sub-layer outputs keep p, nothing between the FFN's Linears
    ffn_inner = [m.p for m in _layers(bert).modules() if isinstance(m, nn.Dropout)]
    assert 0.0 in ffn_inner and 0.1 in ffn_inner
    assert all(m.p == 0.1 for m in _layers(torch_style).modules() if isinstance(m, nn.Dropout))


def test_bert_init_covers_separate_qkv_projections():
    attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)  # q/k/v_proj_weight, no in_proj_weight
    torch.manual_seed(0)
    bert_init_(attn, 0.02)
    for w in (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight, attn.out_proj.weight):
        assert 0.01 < float(w.detach().std()) < 0.03
    assert not attn.in_proj_bias.any() and not attn.out_proj.bias.any()


@pytest.mark.parametrize("name", ["base", "wlqformer"])
def test_bert_style_keeps_padding_invariance(name):
    adapter = tiny_adapter(name, **BERT).eval()
    x, lens = make_frames([21, 9], seed=2, d=adapter.ctx.in_dim)
    both = adapter(x, lens)
    alone = adapter(x[1:, :9], lens[1:])
    n = int(alone.lengths[0])
    torch.testing.assert_close(both.embeds[1, :n], alone.embeds[0, :n], atol=1e-5, rtol=1e-5)
