"""Contract tests run on every registered adapter: shapes, lengths, padding invariance, gradients,
a tiny overfit, and the wrong-width error."""

from __future__ import annotations

import pytest
import torch

from speechwire.registry import ADAPTERS

from helpers import D_ENC, D_LLM, make_frames, make_targets, tiny_adapter

NAMES = ADAPTERS.available()


def test_registry_has_all_paper_adapters():
    assert {"base", "mlp", "linear", "conv", "cif", "ctc", "wlqformer"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_lengths(name):
    adapter = tiny_adapter(name).eval()
    x, lens = make_frames([40, 23, 5, 1])
    with torch.no_grad():
        out = adapter(x, lens)
    assert out.embeds.shape == (4, int(out.lengths.max()), D_LLM)
    assert out.lengths.shape == (4,) and bool((out.lengths >= 1).all())
    pad = torch.arange(out.embeds.shape[1])[None, :] >= out.lengths[:, None]
    assert out.embeds[pad].abs().max() == 0 if pad.any() else True
    assert out.aux_loss is None and out.aux_losses == {}
    if adapter.deterministic_length:
        assert torch.equal(adapter.output_length(lens), out.lengths)
        assert out.ratio is None
    else:
        assert adapter.output_length(lens) is None
        assert out.ratio == pytest.approx(float(lens.sum()) / float(out.lengths.sum()))
    assert not hasattr(adapter, "last_ratio")  # the ratio rides on the output, not on the module


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name):
    adapter = tiny_adapter(name).eval()
    x, lens = make_frames([7, 60], seed=1)
    with torch.no_grad():
        alone = adapter(x[:1, :7], lens[:1])
        batch = adapter(x, lens)
    n = int(alone.lengths[0])
    assert int(batch.lengths[0]) == n
    torch.testing.assert_close(batch.embeds[0, :n], alone.embeds[0, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    adapter = tiny_adapter(name).train()
    x, lens = make_frames([30, 17, 9], seed=2)
    out = adapter(x, lens, make_targets(lens))
    w = torch.randn(out.embeds.shape, generator=torch.Generator().manual_seed(0))
    loss = (out.embeds * w).sum() + (out.aux_loss if out.aux_loss is not None else 0.0)
    loss.backward()
    for pname, p in adapter.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_overfit_four_sequences(name):
    """The adapter learns to map 4 random sequences to fixed target embeddings (MSE drops > 80%).

    Targets come from a teacher of the same kind with other weights, so they are reachable even for
    the linear adapter. The CTC student shares the teacher's head and trains without the CTC loss so
    both pool the same segments (CTC training itself is tested in test_ctc.py).
    """
    kw = {"ctc_loss_weight": 0.0} if name == "ctc" else {}
    student, teacher = tiny_adapter(name, seed=0, **kw).train(), tiny_adapter(name, seed=1, **kw).train()
    if name == "ctc":
        student.head.load_state_dict(teacher.head.state_dict())
    x, lens = make_frames([16, 14, 11, 8], seed=3)
    targets = make_targets(lens)
    with torch.no_grad():
        goal = teacher(x, lens, targets).embeds  # (B, T', d_llm)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)

    def step() -> float:
        out = student(x, lens, targets)
        valid = (torch.arange(out.embeds.shape[1])[None, :] < out.lengths[:, None]).float()  # (B, T')
        mse = (((out.embeds - goal) ** 2).mean(-1) * valid).sum() / valid.sum()
        opt.zero_grad()
        (mse + (out.aux_loss if out.aux_loss is not None else 0.0)).backward()
        opt.step()
        return mse.item()

    first = step()
    for _ in range(25):
        last = step()
    assert last < 0.2 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_wrong_encoder_width_is_a_clear_error(name):
    adapter = tiny_adapter(name).eval()
    x, lens = make_frames([10, 5], d=D_ENC + 1)
    with pytest.raises(ValueError, match=rf"{name} adapter: speech encoder width {D_ENC + 1} does not match"):
        adapter(x, lens)


# model.py reads these for the adapter (the output scale; CIF target counts and CTC labels)
READ_BY_THE_MODEL = {"match_output_scale", "targets_add_special_tokens"}


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_are_the_fields_it_reads(name):
    """Each adapter's `config_fields` (what the unread-field warning trusts) is what it reads."""
    import dataclasses

    from speechwire.adapters import build_adapter, config_fields
    from speechwire.config import AdapterConfig

    from helpers import tiny_adapter_cfg, tiny_adapter_ctx

    names = {f.name for f in dataclasses.fields(AdapterConfig)}

    class Recording(AdapterConfig):
        def __getattribute__(self, key):
            if key in names:
                object.__getattribute__(self, "__dict__").setdefault("_read", set()).add(key)
            return object.__getattribute__(self, key)

    cfg = Recording(**dataclasses.asdict(tiny_adapter_cfg(name, init_std=0.02, cif_tail_rescale=True)))
    cfg.__dict__["_read"] = set()  # __post_init__'s checks read every field: not counted
    adapter = build_adapter(cfg, tiny_adapter_ctx())
    x, lens = make_frames([30, 17])
    adapter.train()(x, lens, make_targets(lens))
    with torch.no_grad():
        adapter.eval()(x, lens)
    assert cfg.__dict__["_read"] | (READ_BY_THE_MODEL & set(config_fields(name))) | {"name"} == set(config_fields(name))
