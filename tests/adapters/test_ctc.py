"""CTC adapter: vectorised pooling vs a slow loop and the authors' algorithm, the CTC loss,
training, clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.adapters import AdapterTargets
from speechwire.adapters.ctc import segment_ids, segment_mean

from helpers import PAD, VOCAB, make_frames, tiny_adapter


def pool_reference(labels: list[int], x: torch.Tensor, blank: int, keep_blanks: bool) -> torch.Tensor:
    """Slow loop: runs of equal labels -> mean; blank runs dropped; all blank -> mean of all frames."""
    out, t = [], 0
    while t < len(labels):
        end = t
        while end + 1 < len(labels) and labels[end + 1] == labels[t]:
            end += 1
        if keep_blanks or labels[t] != blank:
            out.append(x[t : end + 1].mean(0))
        t = end + 1
    return torch.stack(out) if out else x[: len(labels)].mean(0, keepdim=True)


label_seqs = st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=25), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(seqs=label_seqs, keep_blanks=st.booleans(), seed=st.integers(0, 1000))
def test_pooling_matches_slow_reference(seqs, keep_blanks, seed):
    B, T = len(seqs), max(map(len, seqs))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (B, T), generator=g)  # padding gets random labels too
    for b, s in enumerate(seqs):
        labels[b, : len(s)] = torch.tensor(s)
    lens = torch.tensor([len(s) for s in seqs])
    x = torch.randn(B, T, 4, generator=g)
    seg, keep, counts = segment_ids(labels, lens, blank=0, keep_blanks=keep_blanks)
    pooled = segment_mean(x, seg, keep, counts)  # (B, K, 4)
    for b, s in enumerate(seqs):
        ref = pool_reference(s, x[b], 0, keep_blanks)
        assert int(counts[b]) == ref.shape[0]
        torch.testing.assert_close(pooled[b, : ref.shape[0]], ref, atol=1e-5, rtol=1e-5)
        assert pooled[b, ref.shape[0] :].abs().sum() == 0


def test_pooling_by_hand():
    labels = torch.tensor([[0, 0, 1, 1, 0, 2, 2, 2, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    lens = torch.tensor([10, 6])
    x = torch.arange(10.0)[None, :, None].expand(2, 10, 1)
    seg, keep, counts = segment_ids(labels, lens, blank=0, keep_blanks=False)
    assert counts.tolist() == [3, 1]
    pooled = segment_mean(x, seg, keep, counts)
    assert pooled[0, :, 0].tolist() == [2.5, 6.0, 9.0]  # runs 1,1 / 2,2,2 / 1
    assert pooled[1, :1, 0].tolist() == [2.5]  # all blank: mean of its 6 real frames
    seg, keep, counts = segment_ids(labels, lens, blank=0)  # the default keeps blank runs
    assert counts.tolist() == [6, 1]  # 00 / 11 / 0 / 222 / 0 / 1; item 1: one blank run
    assert segment_mean(x, seg, keep, counts)[0, :, 0].tolist() == [0.5, 2.5, 4.0, 6.0, 8.0, 9.0]


def authors_compression(log_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The authors' CTC compression for one item (speechlmm CtcAdapter._ctc_compress_sequence,
    strategy "mean"), written out: runs of equal argmax labels, blanks included, each -> 1/run mean,
    applied as a (T, T') matrix. log_probs (T, V), x (T, C) -> (T', C)."""
    runs = [len(list(g)) for _, g in itertools.groupby(log_probs.argmax(-1).tolist())]
    matrix = torch.zeros(x.shape[0], len(runs))
    start = 0
    for k, n in enumerate(runs):
        matrix[start : start + n, k] = 1.0 / n
        start += n
    return (x.T @ matrix).T


def test_default_keeps_blank_runs_like_the_authors():
    # hand-made posteriors over V = 4 (blank 0): frames 0-1 blank, 2 label 3, 3-5 blank, 6-7 label 2,
    # 8 label 3, 9 blank; the authors' segments: [0,1] [2] [3,4,5] [6,7] [8] [9], blanks averaged
    frame_labels = [0, 0, 3, 0, 0, 0, 2, 2, 3, 0]
    probs = torch.full((10, 4), 0.1)
    probs[torch.arange(10), torch.tensor(frame_labels)] = 0.7
    log_probs = probs.log()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    ref = authors_compression(log_probs, x)
    assert ref.shape[0] == 6
    torch.testing.assert_close(ref[2], x[3:6].mean(0))  # the middle blank run is one averaged vector
    lens = torch.tensor([10])
    seg, keep, counts = segment_ids(log_probs.argmax(-1)[None], lens, blank=0)
    torch.testing.assert_close(segment_mean(x[None], seg, keep, counts)[0], ref)

    # through the adapter with its default config: a head whose argmax follows those labels
    adapter = tiny_adapter("ctc").eval()
    assert adapter.cfg.ctc_keep_blanks
    hidden = torch.zeros(1, 10, adapter.ctx.in_dim)
    hidden[0, torch.arange(10), torch.tensor(frame_labels)] = 1.0  # one-hot of the label in d_enc
    with torch.no_grad():
        adapter.head.weight.zero_()
        adapter.head.bias.zero_()
        adapter.head.weight[torch.arange(4), torch.arange(4)] = 5.0  # logit of label v = 5 * hidden[v]
    assert adapter(hidden, lens).lengths.tolist() == [6]
    dropping = tiny_adapter("ctc", ctc_keep_blanks=False).eval()  # the option: blank runs dropped
    dropping.load_state_dict(adapter.state_dict())
    assert dropping(hidden, lens).lengths.tolist() == [3]  # 3 / 2 2 / 3


def _targets(labels: list[list[int]]) -> AdapterTargets:
    lens = torch.tensor([len(s) for s in labels])
    padded = torch.full((len(labels), int(lens.max())), PAD)
    for b, s in enumerate(labels):
        padded[b, : len(s)] = torch.tensor(s)
    return AdapterTargets(ctc_labels=padded, ctc_label_lengths=lens)


def test_ctc_loss_equals_torch_ctc_loss():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([12, 7], seed=1)
    targets = _targets([[3, 5, 5, 9], [7, 2]])
    out = adapter(x, lens, targets)
    valid = torch.arange(12)[None, :] < lens[:, None]
    head = adapter.head
    logits = torch.nn.functional.linear(x * valid[..., None], head.weight, head.bias)  # (B, T, V)
    expected = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), targets.ctc_labels, lens, targets.ctc_label_lengths, blank=PAD,
        zero_infinity=True,
    )
    torch.testing.assert_close(out.aux_losses["ctc"], expected)
    torch.testing.assert_close(out.aux_loss, 0.1 * expected)
    # the gradients of the chunked head are those of the full log_softmax
    got = torch.autograd.grad(out.aux_losses["ctc"], [head.weight, head.bias])
    want = torch.autograd.grad(expected, [head.weight, head.bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), vocab=st.integers(2, 60), chunk=st.integers(1, 50), seed=st.integers(0, 10**6))
def test_chunked_vocab_head_matches_the_full_logits(n, vocab, chunk, seed):
    """VocabHead's picked columns, rest bucket, argmax and all three gradients equal those computed
    from the whole (N, V) logits, for any chunking (every column picked included)."""
    from speechwire.adapters import ctc as ctc_module

    g = torch.Generator().manual_seed(seed)
    head = ctc_module.VocabHead(8, vocab)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, 8, generator=g))
        head.bias.copy_(torch.randn(vocab, generator=g))
    x = torch.randn(n, 8, generator=g, requires_grad=True)
    columns = torch.unique(torch.randint(0, vocab, (min(vocab, 5),), generator=g))
    if seed % 5 == 0:
        columns = torch.arange(vocab)  # no rest bucket
    others = torch.ones(vocab, dtype=torch.bool)
    others[columns] = False
    d_picked, d_rest = torch.randn(n, columns.numel(), generator=g), torch.randn(n, generator=g)
    old = ctc_module.CHUNK_ELEMENTS
    ctc_module.CHUNK_ELEMENTS = chunk * vocab  # `chunk` rows per chunk
    try:
        picked, rest, best = head(x, columns)
    finally:
        ctc_module.CHUNK_ELEMENTS = old
    logits = torch.nn.functional.linear(x, head.weight, head.bias)
    want_rest = torch.logsumexp(logits[:, others], 1) if others.any() else torch.full((n,), -torch.inf)
    torch.testing.assert_close(picked, logits[:, columns])
    torch.testing.assert_close(rest, want_rest)
    assert torch.equal(best, logits.argmax(1))
    params = [x, head.weight, head.bias]
    got = torch.autograd.grad((picked * d_picked).sum() + (rest * d_rest).nan_to_num(0, 0, 0).sum(), params)
    want_out = (logits[:, columns] * d_picked).sum()
    if others.any():
        want_out = want_out + (torch.logsumexp(logits[:, others], 1) * d_rest).sum()
    want = torch.autograd.grad(want_out, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ctc_loss_decreases_when_trained():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([20, 16, 12], seed=2)
    targets = _targets([[3, 5, 9, 11], [7, 2, 2], [30, 1]])
    opt = torch.optim.Adam(adapter.head.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        loss = adapter(x, lens, targets).aux_losses["ctc"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_training_without_transcripts_is_a_clear_error():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([10])
    for targets in (None, AdapterTargets(target_lengths=torch.tensor([3]))):
        with pytest.raises(ValueError, match="transcript"):
            adapter(x, lens, targets)
    adapter.eval()(x, lens)  # eval pools without the loss


def test_labels_longer_than_frames_warn_and_zero_their_loss():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([3, 10], seed=3)
    with pytest.warns(UserWarning, match=r"items \[0\] have more transcript tokens than encoder frames"):
        out = adapter(x, lens, _targets([[1, 2, 3, 4, 5], [4, 5]]))
    assert torch.isfinite(out.aux_loss)


def test_blank_inside_transcript_and_blank_override():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([10])
    with pytest.raises(ValueError, match="ctc_blank_id"):
        adapter(x, lens, _targets([[3, PAD, 4]]))
    custom = tiny_adapter("ctc", ctc_blank_id=VOCAB - 1)
    assert custom.blank == VOCAB - 1
    custom(x, lens, _targets([[3, PAD, 4]]))  # the pad id is an ordinary label now


def test_label_padding_value_is_ignored_and_bad_ids_are_clear_errors():
    adapter = tiny_adapter("ctc").train()
    x, lens = make_frames([12, 9], seed=4)
    t = _targets([[3, 5, 9], [7]])
    a = adapter(x, lens, t).aux_losses["ctc"]
    t.ctc_labels[1, 1:] = -100  # the model pads with the ignore index
    torch.testing.assert_close(adapter(x, lens, t).aux_losses["ctc"], a)
    t.ctc_labels[0, 0] = VOCAB  # outside the head's vocabulary
    with pytest.raises(ValueError, match="vocab_size"):
        adapter(x, lens, t)


def _ctc_paths(labels: list[int], T: int, U: int, blank: int = 0):
    """Every frame labelling of length T whose CTC collapse is `labels` (brute force)."""
    for path in itertools.product(range(U), repeat=T):
        collapsed = [k for i, k in enumerate(path) if k != blank and (i == 0 or path[i - 1] != k)]
        if collapsed == labels:
            yield path


@settings(max_examples=120, deadline=None)
@given(T=st.integers(1, 6), labels=st.lists(st.integers(1, 2), min_size=0, max_size=4), seed=st.integers(0, 10_000))
def test_forced_frame_labels_is_the_best_ctc_path_through_the_labels(T, labels, seed):
    from speechwire.adapters.ctc import forced_frame_labels

    U = 3
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(2, T + 2, U, generator=g).log_softmax(-1)  # item 1 is padding-length noise
    lab = torch.tensor([labels + [0] * (4 - len(labels)), [1, 0, 0, 0]])
    path, aligned = forced_frame_labels(logp, torch.tensor([T, T + 2]), lab, torch.tensor([len(labels), 1]), blank=0)
    paths = list(_ctc_paths(labels, T, U))
    assert bool(aligned[0]) == (bool(paths) and len(labels) > 0)
    assert path[0, T:].eq(0).all()  # past the valid frames: blank
    if aligned[0]:
        got = path[0, :T].tolist()
        assert tuple(got) in paths
        best = max(sum(float(logp[0, t, k]) for t, k in enumerate(p)) for p in paths)
        assert abs(sum(float(logp[0, t, k]) for t, k in enumerate(got)) - best) < 1e-4
    else:  # no path (or nothing to align): each frame's argmax
        assert path[0, :T].tolist() == logp[0, :T].argmax(-1).tolist()
    assert bool(aligned[1]) and 1 in path[1].tolist()


def test_aligned_training_segments_give_every_token_a_segment_from_the_first_step():
    """ctc_train_segments=aligned: an untrained head's argmax says nothing, yet each training item
    has a segment per transcript token (and blank runs between); evaluation still uses the argmax."""
    labels = [[3, 5, 9, 11], [7, 2, 2], [30, 1]]
    x, lens = make_frames([20, 16, 12], seed=2)
    aligned = tiny_adapter("ctc", ctc_train_segments="aligned").train()
    out = aligned(x, lens, _targets(labels))
    assert [int(n) >= len(lab) + (lab[-1] == lab[-2]) for n, lab in zip(out.lengths, labels)] == [True] * 3
    argmax = tiny_adapter("ctc").train()
    assert torch.equal(argmax.eval()(x, lens).lengths, aligned.eval()(x, lens).lengths)
    with torch.no_grad():  # the head made to say blank everywhere: argmax segments collapse to one per item
        for adapter in (aligned, argmax):
            adapter.head.bias[PAD] = 1e4
    assert argmax.train()(x, lens, _targets(labels)).lengths.tolist() == [1, 1, 1]
    # the best path now takes one frame per token and blank between every two: 2L - 1 segments or more
    got = aligned.train()(x, lens, _targets(labels)).lengths.tolist()
    assert all(2 * len(lab) - 1 <= n <= 2 * len(lab) + 1 for n, lab in zip(got, labels))
