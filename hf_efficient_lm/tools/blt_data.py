"""Byte data pipeline for BLT: pack texts into byte rows (or keep one document per row, or pack a fixed number of
patches per row as Meta's packing iterator), precompute patch lengths as a dataset column (so training does not run
the entropy model each step), calibrate the entropy threshold to a target patch size, collate (right-padding rows of
different lengths). Also the per-mode patching helpers and patch lengths from a start mask (the model itself needs
only ``patcher_blt``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..blt.modeling_blt_entropy import BLTEntropyModel
from ..blt.patcher_blt import patch_starts, relative_positions
from ..blt.tokenization_blt_lm import BOE_ID, BOS_ID, BYTE_OFFSET, EOS_ID
from ..data import pack_ids


def rows_bits_per_byte(model, rows: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    """Bits per UTF-8 byte of BLT id rows (:func:`pack_texts`, :func:`document_rows`): the NLL of every predicted id,
    EOS included, over the number of predicted bytes (ids from ``BYTE_OFFSET`` on), as token models are scored
    (their EOS predictions count, their special tokens hold no bytes)."""
    from ..eval.perplexity import rows_nll

    num_bytes = sum(sum(1 for i in row[1:] if i >= BYTE_OFFSET) for row in rows)
    return rows_nll(model, rows, batch_size=batch_size).nats / math.log(2) / max(num_bytes, 1)


def text_to_ids(text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
    """UTF-8 bytes of ``text`` as BLT ids (byte + 4), with BOS/EOS."""
    ids = [b + BYTE_OFFSET for b in text.encode("utf-8", errors="surrogatepass")]
    return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])


def pack_texts(texts: Iterable[str], seq_len: int, drop_remainder: bool = True) -> list[list[int]]:
    """Concatenate ``text EOS`` byte documents and cut rows of ``seq_len`` ids, each opened by its own BOS
    (:func:`~hf_efficient_lm.data.pack_ids` over the byte ids); with ``drop_remainder=False`` the last row may be
    shorter."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    rows = pack_ids([text_to_ids(text, add_bos=False) for text in texts], seq_len, row_prefix=BOS_ID,
                    drop_remainder=drop_remainder)
    return [row.tolist() for row in rows]


def document_rows(texts: Iterable[str], seq_len: int) -> list[list[int]]:
    """One row per document: ``BOS text EOS`` cut to its first ``seq_len`` ids (rows of different lengths, for
    :class:`BLTDataCollator` to right-pad)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    return [text_to_ids(text)[:seq_len] for text in texts]


def byte_dataset(texts: Sequence[str], seq_len: int, pack: bool = True):
    """A ``datasets.Dataset`` with an ``input_ids`` column: packed rows of ``seq_len`` ids, or with ``pack=False``
    one document per row (at most ``seq_len`` ids)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": pack_texts(texts, seq_len) if pack else document_rows(texts, seq_len)})


def pad_right(rows: Sequence[Sequence[int]], pad_id: int = BOE_ID) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Rows of different lengths -> ``(input_ids, attention_mask)``, each ``[B, longest]``, padded on the right."""
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("every row needs at least one id")
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def entropy_mode(monotonic: bool = False, threshold_add: float | None = None) -> str:
    """The patching mode of Meta's ``PatcherArgs``: ``monotonicity`` wins, then ``threshold_add`` (combined rule)."""
    return "entropy_monotonic" if monotonic else "entropy" if threshold_add is None else "entropy_combined"


def entropy_patch_starts(entropies: torch.Tensor, threshold: float, monotonic: bool = False,
                         attention_mask: torch.Tensor | None = None, max_patch_length: int | None = None,
                         threshold_add: float | None = None, meta_start: bool = True) -> torch.Tensor:
    """Start mask ``[B, N + 1]`` from next-byte entropies ``[B, N]`` (nats). Global rule: byte ``t`` opens a patch
    iff ``H[t-1] > threshold``; approximate monotonic rule (``monotonic=True``): iff ``H[t-1] - H[t-2] > threshold``;
    with ``threshold_add`` Meta's combined rule: iff both ``H[t-1] > threshold`` and ``H[t-1] - H[t-2] >
    threshold_add``. ``meta_start``: the first bytes of the difference rules as Meta's patcher (see
    ``patcher_blt.boundary_rule``)."""
    return patch_starts(entropy_mode(monotonic, threshold_add), None, entropies, threshold, None, max_patch_length,
                        attention_mask, threshold_add=threshold_add, meta_start=meta_start)


def space_patch_starts(input_ids: torch.Tensor, attention_mask=None, max_patch_length: int | None = None) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: byte ``t`` opens a patch iff byte ``t-1`` is space-like and byte ``t-2`` is not."""
    return patch_starts("space", input_ids, max_patch_length=max_patch_length, attention_mask=attention_mask)


def static_patch_starts(batch: int, length: int, patch_size: int, attention_mask=None) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: the BOS patch, then fixed patches of ``patch_size`` bytes from relative byte 1."""
    return patch_starts("static", None, patch_size=patch_size, attention_mask=attention_mask, shape=(batch, length))


def patch_ids_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Patch index of every slot, ``[B, slots]`` (``cumsum - 1``; left padding gets -1)."""
    return starts.long().cumsum(dim=1) - 1


def patch_lengths_from_starts(
    starts: torch.Tensor, include_next: bool = False, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Lengths ``[B, P]`` of the patches over the first ``N`` slots (or all ``N + 1`` with ``include_next``,
    Meta's ``include_next_token`` convention), right-padded with zeros. Rows sum to their number of real bytes
    (+1 with ``include_next``). Pass the ``attention_mask [B, N]`` of right-padded rows so that their trailing padding
    is not counted (left padding never is)."""
    cols = starts if include_next else starts[:, :-1]
    ids = patch_ids_from_starts(cols)
    if attention_mask is not None:
        leading = (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True)  # left padding
        rel = torch.arange(cols.shape[1], device=cols.device).unsqueeze(0) - leading
        counted = rel < attention_mask.long().sum(dim=1, keepdim=True) + int(include_next)
        ids = torch.where(counted, ids, torch.full_like(ids, -1))
    batch = cols.shape[0]
    num = int(ids.max().item()) + 1 if ids.numel() else 0
    lengths = torch.zeros(batch, max(num, 0) + 1, dtype=torch.long, device=starts.device)
    lengths.scatter_add_(1, (ids + 1).clamp(min=0), torch.ones_like(ids))
    return lengths[:, 1:]  # column 0 collected the padding


def row_entropies(entropy_model: BLTEntropyModel, input_ids, attention_mask=None, eos_id=None) -> torch.Tensor:
    """Next-byte entropies ``[B, N]`` (on the CPU) of ``input_ids [B, N]``; with ``eos_id`` every document (the bytes
    after each EOS) is read alone, as ``BLTConfig.document_mask`` does in the model."""
    device = next(entropy_model.parameters()).device
    positions = docs = None
    if eos_id is not None:
        rel = relative_positions(attention_mask, *input_ids.shape, input_ids.device, input_ids, eos_id)
        positions, docs = rel.clamp(min=0).to(device), (rel == 0).long().cumsum(dim=1).to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    return entropy_model.entropies(input_ids.to(device), mask, positions, docs=docs)[0].cpu()


@torch.no_grad()
def compute_patch_lengths(
    input_ids: torch.LongTensor | Sequence[Sequence[int]],
    entropy_model: BLTEntropyModel | None,
    mode: str = "entropy",
    threshold: float | None = None,
    patch_size: int = 4,
    max_patch_length: int | None = None,
    attention_mask: torch.Tensor | None = None,
    threshold_add: float | None = None,
    meta_start: bool = True,
    eos_id: int | None = None,
    include_next: bool = True,
) -> list[list[int]]:
    """Patch lengths of each row (Meta's ``include_next_token`` convention: rows sum to their ``n + 1`` real ids;
    ``include_next=False``: to ``n``), batched. ``input_ids`` is ``[B, N]`` (with an optional ``attention_mask``) or a
    list of rows of different lengths, which are right-padded here; causal patching makes a row's lengths independent
    of its padding. ``eos_id``: document masking (``BLTConfig.document_mask``), each document patched alone."""
    if not isinstance(input_ids, torch.Tensor):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a tensor of input_ids; lists of rows are padded here")
        input_ids, attention_mask = pad_right(input_ids)
        if bool(attention_mask.all()):
            attention_mask = None
    # patched on the CPU, where row_entropies returns the entropies (the ids may sit on an accelerator)
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu() if attention_mask is not None else None
    entropies = None
    if mode.startswith("entropy"):
        if entropy_model is None:
            raise ValueError(f"patching mode {mode!r} needs an entropy model")
        entropies = row_entropies(entropy_model, input_ids, attention_mask, eos_id)
    starts = patch_starts(mode, input_ids, entropies=entropies, threshold=threshold, patch_size=patch_size,
                          max_patch_length=max_patch_length, attention_mask=attention_mask, threshold_add=threshold_add,
                          meta_start=meta_start, eos_id=eos_id)
    lengths = patch_lengths_from_starts(starts, include_next=include_next, attention_mask=attention_mask)
    return [row[row > 0].tolist() for row in lengths]


def add_patch_lengths_column(dataset, entropy_model, mode="entropy", threshold=None, patch_size=4,
                             max_patch_length=None, batch_size: int = 16, **rule):
    """``dataset.map`` adding ``patch_lengths`` computed in batches (vectorised patching, no per-byte loop); ``rule``:
    the other keywords of :func:`compute_patch_lengths` (``threshold_add``, ``meta_start``, ``eos_id``)."""

    def fn(batch):
        rows = batch["input_ids"]  # equal lengths when packed, ragged for one document per row
        lengths = compute_patch_lengths(rows, entropy_model, mode, threshold, patch_size, max_patch_length, **rule)
        return {"patch_lengths": lengths}

    return dataset.map(fn, batched=True, batch_size=batch_size, desc="patch lengths")


@torch.no_grad()
def document_patch_lengths(documents: Sequence[Sequence[int]], entropy_model: BLTEntropyModel | None,
                           mode: str = "entropy", threshold: float | None = None, patch_size: int = 4,
                           max_patch_length: int | None = None, threshold_add: float | None = None,
                           meta_start: bool = True, chunk: int = 8192, batch_size: int = 16) -> list[list[int]]:
    """Patch lengths of each document alone, summing to its length (Meta's preprocessing: ``include_next_token=False``
    per document). The entropy model reads a document in pieces of at most ``chunk`` bytes (its context restarts per
    piece, as in Meta's ``calculate_entropies``); the rule runs over the whole document."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    out = []
    for begin in range(0, len(documents), batch_size):
        docs = [list(d) for d in documents[begin : begin + batch_size]]
        input_ids, attention_mask = pad_right(docs)
        entropies = None
        if mode.startswith("entropy"):
            if entropy_model is None:
                raise ValueError(f"patching mode {mode!r} needs an entropy model")
            pieces = [(d, c) for d, doc in enumerate(docs) for c in range(0, len(doc), chunk)]
            piece_ids, piece_mask = pad_right([docs[d][c : c + chunk] for d, c in pieces])
            piece_entropies = row_entropies(entropy_model, piece_ids, piece_mask)
            entropies = torch.zeros(input_ids.shape)
            for (d, c), row, real in zip(pieces, piece_entropies, piece_mask.sum(dim=1).tolist()):
                entropies[d, c : c + real] = row[:real]
        starts = patch_starts(mode, input_ids, entropies=entropies, threshold=threshold, patch_size=patch_size,
                              max_patch_length=max_patch_length, attention_mask=attention_mask,
                              threshold_add=threshold_add, meta_start=meta_start)
        lengths = patch_lengths_from_starts(starts, attention_mask=attention_mask)
        out.extend(row[row > 0].tolist() for row in lengths)
    return out


def pack_by_patches(documents: Sequence[Sequence[int]], lengths: Sequence[Sequence[int]], patches_per_row: int,
                    max_bytes: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Meta's packing by patch count (``packing_iterator.py``, ``seq_len`` counting patches): concatenate documents
    and their patch lengths (each document patched alone, lengths summing to it: :func:`document_patch_lengths`, so no
    patch spans two documents) and cut rows of exactly ``patches_per_row`` patches. As in Meta's iterator a row's
    first patch is one byte (a longer one gives its first byte a patch of its own and the row's last patch moves on to
    the next row; Meta drops that patch's bytes). Rows end where their last patch ends, so their byte lengths vary
    (the collator right-pads); ``max_bytes`` cuts a longer row and its patches there (Meta's
    ``max_encoder_seq_length``), leaving it fewer patches. The remainder that fills no row is dropped. Returns
    ``(rows, patch_lengths)``, each row's lengths summing to its length (Transformers' convention)."""
    if not isinstance(patches_per_row, int) or patches_per_row < 2:
        raise ValueError(f"patches_per_row must be an int >= 2, got {patches_per_row!r}")
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 2):
        raise ValueError(f"max_bytes must be an int >= 2 or None, got {max_bytes!r}")
    stream = [i for doc in documents for i in doc]
    patches = [n for doc_lengths in lengths for n in doc_lengths]
    if len(documents) != len(lengths):
        raise ValueError(f"lengths must hold one list per document: {len(lengths)} lists for {len(documents)} documents")
    for d, (doc, ls) in enumerate(zip(documents, lengths)):
        if sum(ls) != len(doc) or not all(n > 0 for n in ls):
            raise ValueError(f"patch lengths of document {d} must be positive and sum to its {len(doc)} ids, got {ls}")
    rows, row_lengths, p, offset = [], [], 0, 0
    while True:
        first = patches[p] if p < len(patches) else 0
        take = patches[p + 1 : p + patches_per_row - 1] if first > 1 else patches[p + 1 : p + patches_per_row]
        row = ([1, first - 1] if first > 1 else [first]) + take
        if len(row) < patches_per_row:
            break
        p += 1 + len(take)
        size = sum(row)
        ids = stream[offset : offset + size]
        offset += size
        if max_bytes is not None and size > max_bytes:
            ends = [sum(row[: k + 1]) for k in range(len(row))]
            keep = next(k for k, end in enumerate(ends) if end >= max_bytes)
            row = row[:keep] + [max_bytes - (ends[keep - 1] if keep else 0)]
            ids = ids[:max_bytes]
        rows.append(ids)
        row_lengths.append(row)
    return rows, row_lengths


def patch_packed_dataset(texts: Sequence[str], patches_per_row: int, entropy_model: BLTEntropyModel | None,
                         mode: str = "entropy", threshold: float | None = None, max_bytes: int | None = None, **rule):
    """A ``datasets.Dataset`` of rows packed by patch count (:func:`pack_by_patches`) with ``input_ids`` and
    ``patch_lengths`` columns: each ``BOS text EOS`` document is patched alone (:func:`document_patch_lengths` with
    ``rule``, e.g. ``threshold_add``, ``patch_size``, ``max_patch_length``)."""
    from datasets import Dataset

    documents = [text_to_ids(text) for text in texts]
    lengths = document_patch_lengths(documents, entropy_model, mode, threshold, **rule)
    rows, row_lengths = pack_by_patches(documents, lengths, patches_per_row, max_bytes)
    return Dataset.from_dict({"input_ids": rows, "patch_lengths": row_lengths})


@torch.no_grad()
def mean_patch_size(entropies: torch.Tensor, threshold: float, monotonic: bool = False,
                    max_patch_length: int | None = None, attention_mask: torch.Tensor | None = None,
                    threshold_add: float | None = None, meta_start: bool = True) -> float:
    """Average bytes per patch of entropy patching at ``threshold`` over ``entropies [B, N]`` (real bytes only when
    an ``attention_mask [B, N]`` marks padding)."""
    starts = entropy_patch_starts(entropies, threshold, monotonic, attention_mask, max_patch_length, threshold_add,
                                  meta_start)[:, :-1]
    if attention_mask is None:
        return entropies.numel() / float(starts.sum())
    real = attention_mask.bool()
    return float(real.sum()) / float((starts & real).sum())


@torch.no_grad()
def calibrate_threshold(entropies: torch.Tensor, target_patch_size: float, monotonic: bool = False,
                        iterations: int = 40, attention_mask: torch.Tensor | None = None,
                        threshold_add: float | None = None, meta_start: bool = True) -> float:
    """Bisect the threshold so that the mean patch size on ``entropies [B, N]`` (real bytes of ``attention_mask``)
    is ~``target_patch_size`` (the maintainers' recipe for a new dataset); mean patch size grows with the
    threshold. With ``threshold_add`` (combined rule) the global threshold is bisected at that fixed difference
    threshold (the target may then be out of reach: the difference rule alone bounds the patch size)."""
    if (isinstance(target_patch_size, bool) or not isinstance(target_patch_size, (int, float))
            or not math.isfinite(float(target_patch_size)) or target_patch_size < 1):
        raise ValueError(f"target_patch_size must be a finite number >= 1, got {target_patch_size!r}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    entropies = torch.as_tensor(entropies)
    if entropies.numel() == 0:
        raise ValueError("entropies is empty: nothing to calibrate the threshold on")
    if not torch.isfinite(entropies).all():
        raise ValueError("entropies holds NaN or infinite values; the entropy model's output is broken")
    lo, hi = float(entropies.min()) - 10.0, float(entropies.max()) + 10.0
    if monotonic:
        diffs = entropies[:, 1:] - entropies[:, :-1]
        lo, hi = float(diffs.min()) - 10.0, float(diffs.max()) + 10.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        size = mean_patch_size(entropies, mid, monotonic, None, attention_mask, threshold_add, meta_start)
        if size < target_patch_size:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class BLTDataCollator:
    """Batches ``input_ids`` rows and sets ``labels``; right-pads ``patch_lengths`` with zeros when the column is
    present.

    Packed rows (all one length) are stacked as they are. Rows of different lengths are right-padded with ``pad_id``
    and get an ``attention_mask`` (0 on padding) and ``-100`` labels on padding: BLT's forward gives every real byte
    of a right-padded row the logits it has alone, so the loss is the one of the unpadded rows.
    """

    def __init__(self, pad_id: int = BOE_ID):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("BLTDataCollator got an empty list of features")
        rows = [f["input_ids"] for f in features]
        if len({len(r) for r in rows}) == 1:
            input_ids = torch.tensor(rows, dtype=torch.long)
            batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        else:
            input_ids, attention_mask = pad_right(rows, self.pad_id)
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "patch_lengths" in features[0]:
            longest = max(len(f["patch_lengths"]) for f in features)
            batch["patch_lengths"] = torch.tensor(
                [list(f["patch_lengths"]) + [0] * (longest - len(f["patch_lengths"])) for f in features], dtype=torch.long
            )
        return batch


__all__ = [
    "entropy_mode", "document_patch_lengths", "pack_by_patches", "patch_packed_dataset", "entropy_patch_starts", "space_patch_starts", "static_patch_starts", "patch_ids_from_starts", "patch_lengths_from_starts", "text_to_ids", "pack_texts", "document_rows", "byte_dataset", "pad_right", "compute_patch_lengths",
    "add_patch_lengths_column", "mean_patch_size", "calibrate_threshold", "BLTDataCollator",
    "row_entropies", "rows_bits_per_byte",
]
