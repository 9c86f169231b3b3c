"""Patching rules: hand examples (Meta's combined rule, the monotonic rule's byte 2), equality with a per-byte Python
reference and with Transformers' BltPatcher, lengths always sum to the row length (property test), documents patched
as if alone (document masking), precomputed lengths round trip, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.blt.modeling_blt import BltPatcher, process_patch_lengths

from hf_efficient_lm.blt import (
    entropy_patch_starts,
    patch_lengths_from_starts,
    patch_starts,
    space_patch_starts,
    split_long_patches,
    starts_from_patch_lengths,
    static_patch_starts,
)


def reference_starts(mode, ids, entropies, threshold, patch_size, max_len, threshold_add=None, meta_start=True):
    """Per-byte Python loop over one unpadded row: the rules as written in the spec and Meta's patcher (which drops
    H[0], so with ``meta_start`` byte 2 opens a patch in the difference rules and byte 3 stays closed in the combined
    one); N + 1 decisions."""
    n = len(ids)
    space = [(not (chr(i - 4).isascii() and chr(i - 4).isalnum()) and not (0x80 <= i - 4 <= 0xBF)) if i >= 4 else True
             for i in ids]
    starts, open_start = [], 0
    for t in range(n + 1):
        if t < 2:
            s = True
        elif mode == "entropy":
            s = entropies[t - 1] > threshold
        elif mode == "entropy_monotonic":
            s = (meta_start and t == 2) or entropies[t - 1] - entropies[t - 2] > threshold
        elif mode == "entropy_combined":
            rule = entropies[t - 1] > threshold and entropies[t - 1] - entropies[t - 2] > threshold_add
            s = (meta_start and t == 2) or (rule and not (meta_start and t == 3))
        elif mode == "space":
            s = space[t - 1] and not (t >= 3 and space[t - 2])
        elif mode == "static":
            s = (t - 1) % patch_size == 0
        else:
            s = True
        if not s and max_len is not None and t - open_start == max_len:
            s = True
        if s:
            open_start = t
        starts.append(bool(s))
    return starts


def test_entropy_global_threshold_hand_example():
    h = torch.tensor([[9.0, 0.5, 2.0, 0.1, 0.2, 3.0, 0.1]])
    starts = entropy_patch_starts(h, 1.0)
    assert starts.int().tolist() == [[1, 1, 0, 1, 0, 0, 1, 0]]  # H[0] (BOS) is ignored; bytes 0 and 1 forced
    assert patch_lengths_from_starts(starts).tolist() == [[1, 2, 3, 1]]
    assert patch_lengths_from_starts(starts, include_next=True).tolist() == [[1, 2, 3, 2]]


def test_monotonic_space_static_hand_examples():
    h = torch.tensor([[5.0, 1.0, 1.5, 3.0, 3.1, 0.0]])
    assert entropy_patch_starts(h, 1.0, monotonic=True, meta_start=False).int().tolist() == [[1, 1, 0, 0, 1, 0, 0]]
    ids = torch.tensor([[1] + [b + 4 for b in b"ab  cd,e"]])
    assert space_patch_starts(ids).int().tolist() == [[1, 1, 0, 0, 1, 0, 0, 0, 1, 0]]
    assert static_patch_starts(1, 8, 3).int().tolist() == [[1, 1, 0, 0, 1, 0, 0, 1, 0]]
    assert split_long_patches(entropy_patch_starts(torch.zeros(1, 7), 1.0), 2).int().tolist() == [[1, 1, 0, 1, 0, 1, 0, 1]]


def test_monotonic_rule_at_byte_2_as_meta():
    # Meta's patcher drops H[0] (the entropy after BOS) and starts its difference mask with True: byte 2 always opens
    # a patch. Ours before patching_meta_start tested H[1] - H[0] there; that stays available with meta_start=False.
    h = torch.tensor([[5.0, 1.0, 1.5, 3.0, 3.1, 0.0], [0.0, 2.0, 1.5, 3.0, 3.1, 0.0]])  # H[1] - H[0]: -4.0, +2.0
    assert entropy_patch_starts(h, 1.0, monotonic=True).int().tolist() == [[1, 1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0]]
    assert entropy_patch_starts(h, 1.0, monotonic=True, meta_start=False).int().tolist() == [
        [1, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0]]
    # the global rule never special-cases byte 2 (Meta: entropies[:, 1:] > threshold from byte 2 on)
    assert entropy_patch_starts(h, 2.5).int().tolist() == [[1, 1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 1, 0]]


def test_combined_rule_hand_example():
    # Meta's global + monotonic rule: byte t opens iff H[t-1] > threshold AND H[t-1] - H[t-2] > threshold_add.
    h = torch.tensor([[0.5, 1.0, 2.8, 2.5, 2.6, 0.1, 1.5, 3.0, 1.0, 2.9]])
    # t:              2: forced (Meta)   3: closed (Meta's ~mask[:, :-1])   4, 5: global only   7: difference only
    meta = [[1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1]]
    plain = [[1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1]]
    assert entropy_patch_starts(h, 2.0, threshold_add=0.5).int().tolist() == meta
    assert entropy_patch_starts(h, 2.0, threshold_add=0.5, meta_start=False).int().tolist() == plain
    # each rule alone opens more patches: the combined one is their intersection (from byte 4 on)
    alone = entropy_patch_starts(h, 2.0) | entropy_patch_starts(h, 0.5, monotonic=True)
    assert entropy_patch_starts(h, 2.0).int()[0, 4:6].tolist() == [1, 1]
    assert entropy_patch_starts(h, 0.5, monotonic=True).int()[0, 7].item() == 1
    combined = entropy_patch_starts(h, 2.0, threshold_add=0.5)
    assert bool((combined[:, 4:] <= alone[:, 4:]).all()) and int(combined.sum()) < int(alone.sum())
    assert patch_starts("entropy_combined", None, h, 2.0, threshold_add=0.5).tolist() == combined.tolist()


MODES = ["entropy", "entropy_monotonic", "entropy_combined", "space", "static", "byte"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("max_len", [None, 3])
@pytest.mark.parametrize("meta_start", [True, False])
def test_vectorised_equals_per_byte_reference(mode, max_len, meta_start):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 260, (3, 37), generator=g)
    ids[:, ::5] = 32 + 4  # some spaces
    ent = torch.rand(3, 37, generator=g) * 3
    rule = dict(threshold=1.2 if mode in ("entropy", "entropy_combined") else 0.3, patch_size=4, threshold_add=0.3,
                meta_start=meta_start)
    got = patch_starts(mode, ids, entropies=ent, max_patch_length=max_len, **rule)
    for row in range(3):
        ref = reference_starts(mode, ids[row].tolist(), ent[row].tolist(), rule["threshold"], 4, max_len, 0.3, meta_start)
        assert got[row].tolist() == ref


def test_matches_transformers_blt_patcher_lengths():
    g = torch.Generator().manual_seed(1)
    ent = torch.rand(4, 50, generator=g) * 4
    starts = entropy_patch_starts(ent, 2.0)
    for row in range(4):
        hf = BltPatcher.patch_lengths_from_entropies(ent[row : row + 1], 50, patch_size=4, threshold=2.0)
        hf = hf[hf != 0] if not bool(starts[row, -1]) else hf[0]  # HF adds a zero-length trailing patch
        ours = patch_lengths_from_starts(starts[row : row + 1])[0]
        assert ours[ours > 0].tolist() == hf[hf > 0].tolist()
        assert bool(starts[row, -1]) == bool((hf == 0).any())
    # max_patch_length splitting equals Transformers' process_patch_lengths on the real patches
    lengths = patch_lengths_from_starts(starts)
    split = patch_lengths_from_starts(split_long_patches(starts, 3))
    hf_split = process_patch_lengths(lengths, 3)
    for row in range(4):
        assert split[row][split[row] > 0].tolist() == hf_split[row][hf_split[row] > 0].tolist()


# what every patching rule is drawn with in the property tests below
PATCHING = dict(mode=st.sampled_from(MODES),
                max_len=st.one_of(st.none(), st.integers(1, 6)), threshold=st.floats(-1, 4), seed=st.integers(0, 2**16))


def _two_rows(n: int, pad: int, seed: int, padding_side: str):
    """Row 0: ``n + pad`` random bytes (ids 4..259); row 1: ``n`` real bytes and ``pad`` padding on ``padding_side``.
    Returns ids and attention mask ``[2, n + pad]`` and entropies ``[2, n + pad]`` uniform in [0, 4) nats."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (2, n + pad), generator=g)
    mask = torch.ones_like(ids)
    mask[1, slice(0, pad) if padding_side == "left" else slice(n, None)] = 0
    return ids, mask, torch.rand(2, n + pad, generator=g) * 4


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), pad=st.integers(0, 5), **PATCHING)
def test_lengths_always_sum_to_length(n, pad, mode, max_len, threshold, seed):
    ids, mask, ent = _two_rows(n, pad, seed, "left")
    starts = patch_starts(mode, ids, entropies=ent, threshold=threshold, patch_size=3, max_patch_length=max_len,
                          attention_mask=mask, threshold_add=0.2)
    lengths = patch_lengths_from_starts(starts)
    assert lengths.sum(dim=1).tolist() == [n + pad, n]
    assert not starts[1, :pad].any()  # padding never starts a patch
    if max_len is not None:
        assert int(lengths.max()) <= max_len
    # left padding does not change the patches of the real bytes
    alone = patch_starts(mode, ids[1:, pad:], entropies=ent[1:, pad:], threshold=threshold, patch_size=3,
                         max_patch_length=max_len, threshold_add=0.2)
    assert starts[1, pad:].tolist() == alone[0].tolist()
    # lengths -> starts round trip (both conventions)
    assert torch.equal(starts_from_patch_lengths(lengths, n + pad, mask)[:, :-1], starts[:, :-1])
    with_next = patch_lengths_from_starts(starts, include_next=True)
    assert with_next.sum(dim=1).tolist() == [n + pad + 1, n + 1]
    assert torch.equal(starts_from_patch_lengths(with_next, n + pad, mask), starts)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), pad=st.integers(1, 5), **PATCHING)
def test_right_padding_keeps_the_patches_of_the_row_alone(n, pad, mode, max_len, threshold, seed):
    ids, mask, ent = _two_rows(n, pad, seed, "right")
    kwargs = dict(threshold=threshold, patch_size=3, max_patch_length=max_len, threshold_add=0.2)
    starts = patch_starts(mode, ids, entropies=ent, attention_mask=mask, **kwargs)
    alone = patch_starts(mode, ids[1:, :n], entropies=ent[1:, :n], **kwargs)
    # real bytes and the next-byte slot decide as alone; the rest of the padding never opens a patch
    assert starts[1, : n + 1].tolist() == alone[0].tolist() and not starts[1, n + 1 :].any()
    assert starts[0].tolist() == patch_starts(mode, ids[:1], entropies=ent[:1], **kwargs)[0].tolist()
    for include_next in (False, True):
        lengths = patch_lengths_from_starts(starts, include_next=include_next, attention_mask=mask)
        row_alone = patch_lengths_from_starts(alone, include_next=include_next)[0]
        assert lengths[1][lengths[1] > 0].tolist() == row_alone[row_alone > 0].tolist()
    with_next = patch_lengths_from_starts(starts, include_next=True, attention_mask=mask)
    assert torch.equal(starts_from_patch_lengths(with_next, n + pad, mask), starts)
    back = starts_from_patch_lengths(patch_lengths_from_starts(starts, attention_mask=mask), n + pad, mask)
    assert torch.equal(back[1, :n], starts[1, :n]) and not back[1, n + 1 :].any()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), pad=st.integers(0, 4), mode=st.sampled_from(MODES),
    max_len=st.one_of(st.none(), st.integers(1, 5)), meta_start=st.booleans(), seed=st.integers(0, 2**16),
)
def test_documents_are_patched_as_if_alone(sizes, pad, mode, max_len, meta_start, seed):
    # Document masking (eos_id): rules count from each document's first byte (the one after an EOS), so every document
    # of a packed, left-padded row gets the patches it gets alone, and the byte after each EOS opens a patch.
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(4, 260, (n,), generator=g).tolist() + [2] for n in sizes]
    docs[-1] = docs[-1][:-1] or [7]  # the last document is cut (no EOS) like the end of a packed row
    row = [i for d in docs for i in d]
    ids = torch.tensor([[0] * pad + row])
    mask = torch.tensor([[0] * pad + [1] * len(row)])
    ent = torch.rand(1, pad + len(row), generator=g) * 3
    rule = dict(threshold=1.0, patch_size=3, max_patch_length=max_len, threshold_add=0.2, meta_start=meta_start)
    starts = patch_starts(mode, ids, entropies=ent, attention_mask=mask, eos_id=2, **rule)[0]
    assert not starts[:pad].any()
    at = pad
    for d in docs:
        alone = patch_starts(mode, torch.tensor([d]), entropies=ent[:, at : at + len(d)], **rule)[0]
        assert starts[at : at + len(d)].tolist() == alone[:-1].tolist()
        at += len(d)
    assert starts[-1] == alone[-1]  # the next-byte slot decides as after the last document alone
    without = patch_starts(mode, ids, entropies=ent, attention_mask=mask, **rule)[0]
    assert torch.equal(starts[: pad + len(docs[0])], without[: pad + len(docs[0])])  # the first document


def test_bad_input_errors():
    with pytest.raises(ValueError, match="finite number"):
        entropy_patch_starts(torch.zeros(1, 4), math.nan)
    with pytest.raises(ValueError, match="finite number"):
        entropy_patch_starts(torch.zeros(1, 4), "1.0")
    with pytest.raises(ValueError, match="sum to 6 but the row has 4 bytes"):
        starts_from_patch_lengths(torch.tensor([[1, 2, 3]]), 4)
    with pytest.raises(ValueError, match="non-negative"):
        starts_from_patch_lengths(torch.tensor([[1, 4, -1]]), 4)
    # 2.5 + 1.5 + 0.9 read as 2 + 1 + 0 would sum to the row's 3 bytes: float lengths are refused, not truncated
    with pytest.raises(ValueError, match="non-negative integers, got dtype torch.float32"):
        starts_from_patch_lengths(torch.tensor([[2.5, 1.5, 0.9]]), 3)
    # a [1, N] mask for a batch of 2 would broadcast its padding onto the other row
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, length\] = \[2, 6\], got \[1, 6\]"):
        patch_starts("space", torch.full((2, 6), 70), attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="max_patch_length"):
        split_long_patches(torch.ones(1, 3, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="unknown patching mode"):
        patch_starts("bpe", torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="patching_threshold_add must be a finite number, got None"):
        patch_starts("entropy_combined", None, torch.zeros(1, 4), 1.0)
    with pytest.raises(ValueError, match="patching_threshold_add must be a finite number, got nan"):
        entropy_patch_starts(torch.zeros(1, 4), 1.0, threshold_add=math.nan)


def test_patchers_that_read_no_ids_follow_the_mask_device():
    """static_patch_starts built its positions on the CPU whatever the padding mask's device (a CUDA mask failed);
    the "meta" device stands in for an accelerator."""
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    assert static_patch_starts(2, 8, 4, attention_mask=mask.to("meta")).device.type == "meta"
    assert static_patch_starts(2, 8, 4, attention_mask=mask).device.type == "cpu"
