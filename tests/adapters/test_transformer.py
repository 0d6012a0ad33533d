"""The transformer stack and Q-Former layers: PyTorch's vs BERT's init, LayerNorm eps and dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechwire.adapters.transformer import ReZeroStack, bert_init_
from speechwire.config import AdapterConfig, ConfigError

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


@pytest.mark.parametrize("name", ["base", "conv"])
def test_zero_residual_init_starts_frame_local_and_still_learns_to_mix(name):
    """residual_init=zero: a change in one input frame moves only the output that frame reaches without
    attention (base: its own; conv: the one its two stride-2 convolutions feed), until training moves
    the zeroed branches."""
    x, lengths = make_frames([40])
    x2 = x.clone()
    x2[0, 20] += 5.0
    own = 20 if name == "base" else 5  # kernel 3, stride 2, twice: input 20 -> 10 -> 5

    def spread(adapter) -> float:
        """Largest change at any other output, relative to the change at the frame's own output."""
        delta = (adapter(x2, lengths).embeds - adapter(x, lengths).embeds).abs().amax(-1)[0]  # (T',)
        return float(torch.cat([delta[:own], delta[own + 1:]]).max() / delta[own])

    adapter = tiny_adapter(name, residual_init="zero").eval()
    assert spread(adapter) < 1e-4
    assert spread(tiny_adapter(name).eval()) > 1e-3  # PyTorch's init: attention spreads it from the start
    # the zeroed branches get gradients: one step makes the stack mix frames
    adapter.train()
    target = torch.randn(adapter(x, lengths).embeds.shape, generator=torch.Generator().manual_seed(1))
    (adapter(x, lengths).embeds * target).sum().backward()  # (a squared norm is constant after a LayerNorm)
    branch = adapter.stack.layers.layers[0].self_attn.out_proj.weight
    assert branch.grad is not None and branch.grad.abs().sum() > 1e-3
    torch.optim.SGD(adapter.parameters(), lr=0.1).step()
    assert spread(adapter.eval()) > 1e-3


@pytest.mark.parametrize("name", ["base", "conv"])
def test_rezero_layers_start_as_identity_and_their_gates_learn_to_mix(name):
    """residual_init=rezero: the layers start as the identity (the stack is its two projections), the
    branches' weights get no gradient while their gates are 0, the gates do, and after one step the
    stack mixes frames. Padding never leaks into an item's outputs."""
    x, lengths = make_frames([40])
    x2 = x.clone()
    x2[0, 20] += 5.0
    own = 20 if name == "base" else 5
    adapter = tiny_adapter(name, residual_init="rezero")
    assert isinstance(adapter.stack.layers, ReZeroStack)
    plain = tiny_adapter(name, num_layers=0)
    plain.load_state_dict({k: v for k, v in adapter.state_dict().items() if ".layers." not in k})
    adapter.eval(), plain.eval()
    torch.testing.assert_close(adapter(x, lengths).embeds, plain(x, lengths).embeds)

    def spread() -> float:
        delta = (adapter(x2, lengths).embeds - adapter(x, lengths).embeds).abs().amax(-1)[0]
        return float(torch.cat([delta[:own], delta[own + 1:]]).max() / delta[own])

    assert spread() < 1e-6
    adapter.train()
    target = torch.randn(adapter(x, lengths).embeds.shape, generator=torch.Generator().manual_seed(1))
    (adapter(x, lengths).embeds * target).sum().backward()
    layer = adapter.stack.layers.layers[0]
    assert layer.gates.grad is not None and layer.gates.grad.abs().sum() > 1e-6
    assert layer.self_attn.out_proj.weight.grad is None or not layer.self_attn.out_proj.weight.grad.any()
    torch.optim.SGD(adapter.parameters(), lr=0.1).step()
    adapter.zero_grad()
    (adapter(x, lengths).embeds * target).sum().backward()
    assert layer.self_attn.out_proj.weight.grad.abs().sum() > 1e-6  # the gate moved: the branch learns too
    adapter.eval()
    assert spread() > 1e-4
    both_x, both_lens = make_frames([21, 9], seed=2, d=adapter.ctx.in_dim)
    both = adapter(both_x, both_lens)
    alone = adapter(both_x[1:, :9], both_lens[1:])
    n = int(alone.lengths[0])
    torch.testing.assert_close(both.embeds[1, :n], alone.embeds[0, :n], atol=1e-5, rtol=1e-5)


def test_residual_init_names_are_checked():
    with pytest.raises(ConfigError, match="residual_init='fixup' must be one of default, zero, rezero"):
        AdapterConfig(residual_init="fixup")
