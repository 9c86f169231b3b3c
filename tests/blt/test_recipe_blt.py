"""Meta's recipe as options (issue 14, item 1): document masking across EOS, the combined threshold rule, the monotonic
rule's byte 2 as Meta's patcher, rows packed by patch count. Each option changes outputs exactly where it should, and
cached decoding equals the teacher-forced forward for each new mode with a boundary pending after the prompt."""

import math

import pytest
import torch

from hf_efficient_lm import BLTConfig
from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.tools.blt_data import (
    BLTDataCollator,
    compute_patch_lengths,
    document_patch_lengths,
    entropy_patch_starts,
    pack_by_patches,
    patch_lengths_from_starts,
    patch_packed_dataset,
    text_to_ids,
)
from hf_efficient_lm.tools.blt_testing import make_tiny_blt, random_bytes

EOS = 2


def _documents(sizes, seed=0, cut_last=True):
    """``BOS random bytes EOS`` documents of ``sizes`` bytes; the last one without EOS (a row's cut end)."""
    g = torch.Generator().manual_seed(seed)
    docs = [random_bytes(1, n, g)[0].tolist() + [EOS] for n in sizes]
    if cut_last:
        docs[-1] = docs[-1][:-1]
    return docs


def _twin(model, **overrides):
    """The same weights under a config that differs by ``overrides``."""
    twin = make_tiny_blt(seed=0, **{**_overrides_of(model), **overrides})
    twin.load_state_dict(model.state_dict())
    twin.config.patching_threshold = model.config.patching_threshold
    return twin.eval()


def _overrides_of(model):
    c = model.config
    return dict(patching_mode=c.patching_mode, patching_threshold_add=c.patching_threshold_add,
                patching_meta_start=c.patching_meta_start, document_mask=c.document_mask)


# ---------------------------------------------------------------------------------------------------- document mask
@torch.no_grad()
def test_document_mask_makes_each_packed_document_equal_to_the_document_alone():
    docs = _documents([13, 17, 9])
    row = torch.tensor([sum(docs, [])])
    masked = make_tiny_blt(seed=0, document_mask=True)
    plain = _twin(masked, document_mask=False)
    out_masked = masked.model(row)
    logits_masked, logits_plain = masked(row).logits[0], plain(row).logits[0]
    start = 0
    for i, doc in enumerate(docs):
        alone = torch.tensor([doc])
        span = slice(start, start + len(doc))
        ref, ref_out = masked(alone).logits[0], masked.model(alone)
        # with document_mask: logits, patches and entropies of every document == the document alone
        torch.testing.assert_close(logits_masked[span], ref, atol=1e-5, rtol=0)
        assert out_masked.patch_starts[0, span].tolist() == ref_out.patch_starts[0, :-1].tolist()
        torch.testing.assert_close(out_masked.entropies[0, span], ref_out.entropies[0], atol=1e-5, rtol=0)
        ref_plain = plain(alone).logits[0]
        if i == 0:  # the first document sees nothing before it either way
            torch.testing.assert_close(logits_plain[span], ref_plain, atol=1e-5, rtol=0)
        else:  # without the mask the later documents read the earlier ones (attention, n-grams, patching)
            assert (logits_plain[span] - ref_plain).abs().max() > 1e-2
        start += len(doc)
    # a row with no EOS is one document: the option changes nothing there
    single = random_bytes(2, 30, torch.Generator().manual_seed(5))
    torch.testing.assert_close(masked(single).logits, plain(single).logits, atol=1e-6, rtol=0)


@torch.no_grad()
def test_document_mask_with_padding_and_precomputed_patch_lengths():
    docs = _documents([11, 8, 6], seed=1)
    row = sum(docs, [])
    short = _documents([7, 5], seed=2)
    model = make_tiny_blt(seed=0, document_mask=True)
    # right padding (training) and left padding (scoring) leave every real byte as in its row alone
    batch = BLTDataCollator()([{"input_ids": row}, {"input_ids": sum(short, [])}])
    padded = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(padded[0], model(torch.tensor([row])).logits[0], atol=1e-5, rtol=0)
    n = len(sum(short, []))
    torch.testing.assert_close(padded[1, :n], model(torch.tensor([sum(short, [])])).logits[0], atol=1e-5, rtol=0)
    left = torch.zeros(1, len(row), dtype=torch.long)
    left[0, len(row) - n:] = torch.tensor(sum(short, []))
    mask = (torch.arange(len(row)) >= len(row) - n).long()[None]
    torch.testing.assert_close(model(left, attention_mask=mask).logits[0, len(row) - n:], padded[1, :n], atol=1e-5,
                               rtol=0)
    # the data tool patches per document like the model (eos_id), so precomputed lengths give the same logits
    lengths = compute_patch_lengths([row], model.model.entropy_model, "entropy", model.config.patching_threshold,
                                    eos_id=EOS)
    precomputed = model(torch.tensor([row]), patch_lengths=torch.tensor(lengths)).logits
    torch.testing.assert_close(precomputed, model(torch.tensor([row])).logits, atol=0, rtol=0)
    # a precomputed patch across an EOS is refused (documents never share a patch)
    with pytest.raises(ValueError, match="a patch spans two documents"):
        model(torch.tensor([row]), patch_lengths=torch.tensor([[1, len(row) - 1]]))


@torch.no_grad()
def test_document_mask_sdpa_equals_eager_full_and_cached():
    # The block-causal masks go through Transformers' mask functions (an and_mask_function), whose eager (additive
    # float) and sdpa (boolean) forms must agree, in the full forward and the cached steps.
    overrides = dict(document_mask=True, patching_mode="entropy_combined", patching_threshold_add=0.0)
    sdpa = make_tiny_blt(seed=0, attn_implementation="sdpa", **overrides)
    eager = make_tiny_blt(seed=0, attn_implementation="eager", **overrides)
    x = torch.tensor([sum(_documents([9, 12, 8], seed=8), []), [0] * 7 + sum(_documents([14, 9], seed=9), [])])
    mask = (x != 0).long()
    real = mask.bool()  # padding positions have no defined output
    torch.testing.assert_close(sdpa(x, attention_mask=mask).logits[real], eager(x, attention_mask=mask).logits[real],
                               atol=1e-5, rtol=0)
    caches = [cache_of(m(x[:, :12], attention_mask=mask[:, :12], use_cache=True)) for m in (sdpa, eager)]
    for t in range(12, x.shape[1]):
        a, b = (m(x[:, t : t + 1], past_key_values=c, use_cache=True).logits for m, c in zip((sdpa, eager), caches))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- combined / byte 2 rules
@torch.no_grad()
def test_combined_rule_in_the_model_is_the_intersection_of_the_two_rules():
    model = make_tiny_blt(seed=0, patching_mode="entropy_combined", patching_threshold_add=0.0)
    x = random_bytes(3, 40, torch.Generator().manual_seed(7))
    out = model.model(x)
    thr = model.config.patching_threshold
    assert torch.equal(out.patch_starts, entropy_patch_starts(out.entropies, thr, threshold_add=0.0))
    global_only = entropy_patch_starts(out.entropies, thr)
    rising = entropy_patch_starts(out.entropies, 0.0, monotonic=True)
    assert bool((out.patch_starts[:, 4:] <= (global_only & rising)[:, 4:]).all())
    assert int(out.patch_starts.sum()) < min(int(global_only.sum()), int(rising.sum()))
    assert not out.patch_starts[:, 3].any() and out.patch_starts[:, 2].all()  # Meta's first bytes
    # the logits change with the patches (the latent transformer reads other patches)
    glob = _twin(model, patching_mode="entropy", patching_threshold_add=None)
    assert not torch.equal(glob.model(x).patch_starts, out.patch_starts)
    assert (glob(x).logits - model(x).logits).abs().max() > 1e-3


@torch.no_grad()
def test_meta_start_changes_only_byte_2_and_what_follows_from_it():
    meta = make_tiny_blt(seed=0, patching_mode="entropy_monotonic")
    ours = _twin(meta, patching_meta_start=False)
    x = random_bytes(4, 30, torch.Generator().manual_seed(11))
    a, b = meta.model(x).patch_starts, ours.model(x).patch_starts
    assert a[:, 2].all() and not b[:, 2].all()  # Meta: byte 2 always opens; ours decides by H[1] - H[0]
    assert torch.equal(torch.cat([a[:, :2], a[:, 3:]], 1), torch.cat([b[:, :2], b[:, 3:]], 1))
    la, lb = meta(x).logits, ours(x).logits
    torch.testing.assert_close(la[:, 0], lb[:, 0], atol=1e-6, rtol=0)  # byte 0 reads the BOS patch either way
    differs = ~b[:, 2]
    assert (la[differs, 1:] - lb[differs, 1:]).abs().amax(dim=(1, 2)).min() > 1e-3
    torch.testing.assert_close(la[~differs], lb[~differs], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- cached decode == full forward
NEW_MODES = [
    dict(patching_mode="entropy_combined", patching_threshold_add=0.0),
    dict(patching_mode="entropy_monotonic"),
    dict(patching_mode="entropy_monotonic", patching_meta_start=False),
    dict(document_mask=True),
    dict(document_mask=True, patching_mode="entropy_combined", patching_threshold_add=0.0),
    dict(document_mask=True, patching_mode="space"),
]


@pytest.mark.parametrize("overrides", NEW_MODES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@torch.no_grad()
def test_cached_decode_equals_teacher_forced_forward_with_a_pending_boundary(overrides):
    # Row 0 is a packed row (documents separated by EOS), row 1 a left-padded shorter one. The prompt ends right
    # where a patch closes (a boundary pending after its last byte; with document_mask also at an EOS, where the
    # next byte opens a document); then every byte, EOS included, goes through the caches one at a time.
    model = make_tiny_blt(seed=0, **overrides)
    docs = _documents([9, 6, 12, 20], seed=3)
    x = torch.tensor([sum(docs, []), [0] * 5 + sum(_documents([15, 29], seed=4), [])])
    mask = (x != 0).long()
    full = model(x, attention_mask=mask).logits
    starts = model.model(x, attention_mask=mask).patch_starts
    eos_split = len(docs[0]) + len(docs[1])  # the prompt ends with an EOS
    pending = [t for t in range(12, x.shape[1] - 8) if starts[0, t] and starts[1, t]]
    splits = sorted({pending[0], eos_split} if overrides.get("document_mask") else {pending[0], pending[-1]})
    assert starts[0, eos_split] or not overrides.get("document_mask")
    for split in splits:
        out = model(x[:, :split], attention_mask=mask[:, :split], use_cache=True)
        torch.testing.assert_close(out.logits, full[:, :split], atol=1e-5, rtol=0)
        cache = cache_of(out)
        for t in range(split, x.shape[1]):
            step = model.model(x[:, t : t + 1], cache=cache)
            assert torch.equal(step.patch_starts[:, 0], starts[:, t + 1])  # the cache's rule == the batched one
            logits = model.lm_head(step.last_hidden_state[:, 0]).float()
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
    # non-degenerate: patches of mixed sizes
    num = starts.sum(dim=1)
    assert 4 < int(num.min()) and int(num.max()) < x.shape[1] - 8, num


@torch.no_grad()
def test_document_mask_generation_with_cache_equals_recompute():
    model = make_tiny_blt(seed=3, document_mask=True)
    prompt = torch.tensor([sum(_documents([10, 8], seed=6), [])])  # ... EOS BOS bytes: generation runs in document 2
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    recompute = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, recompute) and cached.shape[1] == prompt.shape[1] + 12
    # the continuation depends only on the last document
    alone = model.generate(torch.tensor([_documents([10, 8], seed=6)[1]]), max_new_tokens=12, do_sample=False)
    assert torch.equal(cached[0, prompt.shape[1]:], alone[0, -12:])


# ------------------------------------------------------------------------------------------- packing by patch count
@torch.no_grad()
def test_rows_packed_by_patch_count():
    model = make_tiny_blt(seed=0)
    texts = ["Hello world, this is a byte model. " * 3, "def f(x):\n    return x + 1\n" * 4, "é ü 😀 " * 5, "short"]
    documents = [text_to_ids(t) for t in texts]
    lengths = document_patch_lengths(documents, model.model.entropy_model, "entropy", model.config.patching_threshold)
    for doc, ls in zip(documents, lengths):  # each document patched alone == the model's in-forward patching
        assert ls == patch_lengths_from_starts(model.model(torch.tensor([doc])).patch_starts)[0].tolist()
    ds = patch_packed_dataset(texts, 12, model.model.entropy_model, threshold=model.config.patching_threshold)
    stream = [i for d in documents for i in d]
    flat = [i for r in ds["input_ids"] for i in r]
    assert len(ds) >= 3 and flat == stream[: len(flat)]  # nothing dropped or reordered
    doc_starts = {0}
    for d in documents:
        doc_starts.add(max(doc_starts) + len(d))
    offset = 0
    for row, ls in zip(ds["input_ids"], ds["patch_lengths"]):
        assert len(ls) == 12 and ls[0] == 1 and sum(ls) == len(row)  # a fixed patch count, the first patch one byte
        begins = {offset + sum(ls[:k]) for k in range(len(ls))}
        assert {s for s in doc_starts if offset <= s < offset + len(row)} <= begins  # no patch spans documents
        offset += len(row)
    assert len({len(r) for r in ds["input_ids"]}) > 1  # rows of varying byte length
    # the collator right-pads them; the model takes the lengths (each row's patch count is 12)
    batch = BLTDataCollator()([ds[i] for i in range(len(ds))])
    out = model.model(batch["input_ids"], attention_mask=batch["attention_mask"], patch_lengths=batch["patch_lengths"])
    real = batch["attention_mask"].bool()
    assert (out.patch_starts[:, :-1] & real).sum(dim=1).tolist() == [12] * len(ds)
    assert math.isfinite(float(model(**batch).loss))
    # max_bytes cuts rows (and their last patch) there
    rows, row_lengths = pack_by_patches(documents, lengths, 12, max_bytes=20)
    assert all(len(r) <= 20 and sum(ls) == len(r) for r, ls in zip(rows, row_lengths))


def test_pack_by_patches_hand_example_and_errors():
    docs = [[1, 10, 11, 12, 2], [1, 20, 21, 2], [1, 30, 31, 2], [1, 40]]
    lengths = [[1, 3, 1], [2, 2], [1, 1, 2], [2]]  # document 2's first patch is 2 bytes
    rows, row_lengths = pack_by_patches(docs, lengths, 3)
    # row 1: [1][3][1]; row 2 starts with a 2-byte patch, split to [1][1] + [2], so the patch that would have been its
    # third ([1] of document 3) opens row 3; document 4 fills no row and is dropped
    assert row_lengths == [[1, 3, 1], [1, 1, 2], [1, 1, 2]]
    assert rows == [[1, 10, 11, 12, 2], [1, 20, 21, 2], [1, 30, 31, 2]]
    with pytest.raises(ValueError, match="patches_per_row"):
        pack_by_patches(docs, lengths, 1)
    with pytest.raises(ValueError, match="document 1 must be positive and sum to its 4 ids"):
        pack_by_patches(docs, [[1, 3, 1], [3, 2], [1, 1, 2], [2]], 3)
    with pytest.raises(ValueError, match="chunk"):
        document_patch_lengths(docs, None, "space", chunk=0)
    # the entropy model reads long documents in chunks; the rule still runs over the whole document
    chunked = document_patch_lengths(docs, None, "space", chunk=2)
    assert [sum(ls) for ls in chunked] == [5, 4, 4, 2]


# ----------------------------------------------------------------------------------------------------------- config
def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="patching_threshold_add must be a finite number, got None"):
        BLTConfig(patching_mode="entropy_combined")
    with pytest.raises(ValueError, match="patching_threshold_add must be a finite number, got nan"):
        BLTConfig(patching_mode="entropy_combined", patching_threshold_add=math.nan)
    with pytest.raises(ValueError, match="document_mask must be True or False, got 'yes'"):
        BLTConfig(document_mask="yes")
    with pytest.raises(ValueError, match="patching_meta_start must be True or False"):
        BLTConfig(patching_meta_start=1)
    with pytest.raises(ValueError, match=r"document_mask needs eos_token_id to be one byte id in \[1, 260\), got \[2, 3\]"):
        BLTConfig(document_mask=True, eos_token_id=[2, 3])
    config = BLTConfig(patching_mode="entropy_combined", patching_threshold_add=0.25, document_mask=True)
    with pytest.raises(ValueError, match="patching_threshold_add"):
        config.patching_threshold_add = None  # assignments are validated too; the old value stays
    assert config.patching_threshold_add == 0.25
    config.save_pretrained(tmp_path)
    back = BLTConfig.from_pretrained(tmp_path)
    assert (back.patching_mode, back.patching_threshold_add, back.document_mask, back.patching_meta_start) == (
        "entropy_combined", 0.25, True, True)
    assert BLTConfig().document_mask is False and BLTConfig().patching_meta_start is True  # the stated defaults


def test_transformers_export_refuses_document_mask(tmp_path):
    model = make_tiny_blt(seed=0, document_mask=True)
    with pytest.raises(ValueError, match="Transformers' Blt has no document masking"):
        model.save_pretrained_transformers(tmp_path / "out")


# --------------------------------------------------------------------------------------------------- training path
@pytest.mark.parametrize("options", [
    ["--space-patching", "--document-mask", "--patches-per-row", "16", "--max-row-bytes", "96"],
    ["--patching-mode", "entropy_combined", "--threshold-add", "0.0", "--document-mask", "--target-patch-size", "3"],
], ids=["space-docmask-patch-rows", "combined-docmask-byte-rows"])
def test_train_blt_takes_the_recipe_options(tmp_path, options):
    import json

    from hf_efficient_lm import BLTForCausalLM
    from hf_efficient_lm.tools.blt_training import train_blt_main

    texts = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(40)]
    for name, rows in (("train", texts), ("valid", texts[:4])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    entropy_dir = tmp_path / "entropy"
    make_tiny_blt(seed=0).model.entropy_model.save_pretrained(entropy_dir)
    entropy = [] if "--space-patching" in options else ["--entropy-model", str(entropy_dir)]
    train_blt_main([
        "--train-files", str(tmp_path / "train.jsonl"), "--valid-files", str(tmp_path / "valid.jsonl"), *entropy,
        *options, "--seq-len", "64", "--max-steps", "2", "--batch-size", "2", "--eval-rows", "1", "--local-hidden", "32",
        "--latent-hidden", "64", "--latent-layers", "1", "--decoder-layers", "1", "--hash-buckets", "31",
        "--output-dir", str(tmp_path / "out"),
    ])
    metrics = json.loads((tmp_path / "out" / "train_blt_metrics.json").read_text())
    config = BLTForCausalLM.from_pretrained(tmp_path / "out").config
    assert config.document_mask and metrics["document_mask"]
    assert math.isfinite(metrics["bits_per_byte"]["valid"])
    if "--patches-per-row" in options:
        assert metrics["patches_per_row"] == 16 and config.patching_mode == "space"
    else:
        assert (config.patching_mode, config.patching_threshold_add) == ("entropy_combined", 0.0)
        assert metrics["threshold_add"] == 0.0 and 1.0 < metrics["mean_patch_size"]


def test_train_blt_calibrates_on_the_whole_set_and_refuses_options_it_would_ignore(tmp_path):
    """The threshold was calibrated on the first 32 rows (the start of the first file), so the column's patches missed
    the requested size; --threshold-add / --max-row-bytes were parsed and ignored outside their modes. The first
    file gives more rows than the calibration sample (256), so a sample of the first rows would hold no row of the
    second file."""
    import json

    from hf_efficient_lm.tools.blt_training import CALIBRATION_ROWS, train_blt_main

    # two domains of different predictability, one file each: the first rows alone say little about the second
    repetitive = [f"Doc {i}: " + "abcabcabc abcabcabc " * (2 + i % 3) for i in range(300)]
    varied = [f"Note {i}: " + " ".join(f"{(i * 7919 + j * 104729) % 100003:x}" for j in range(30)) for i in range(60)]
    files = []
    for name, rows in (("a", repetitive), ("b", varied)):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    entropy_dir = tmp_path / "entropy"
    blt = make_tiny_blt(seed=0)
    with torch.no_grad():  # sharpened: entropies that differ between the domains and along each row
        for parameter in blt.model.entropy_model.parameters():
            parameter.mul_(4.0)
    blt.model.entropy_model.save_pretrained(entropy_dir)
    common = ["--train-files", *map(str, files), "--valid-files", str(files[0]), "--entropy-model", str(entropy_dir),
              "--seq-len", "64", "--max-steps", "1", "--batch-size", "2", "--eval-rows", "1", "--local-hidden", "32",
              "--latent-hidden", "64", "--latent-layers", "1", "--decoder-layers", "1", "--hash-buckets", "31",
              "--output-dir", str(tmp_path / "out"), "--target-patch-size", "3"]
    train_blt_main(common)
    metrics = json.loads((tmp_path / "out" / "train_blt_metrics.json").read_text())
    assert len("".join(repetitive).encode()) // 64 > CALIBRATION_ROWS
    # (2.98 here; a threshold calibrated on the first 256 rows, all of the first file, gives 2.88)
    assert abs(metrics["mean_patch_size"] - 3.0) < 0.06, metrics["mean_patch_size"]
    for wrong in (["--threshold-add", "0.5"], ["--max-row-bytes", "96"]):
        with pytest.raises(SystemExit):
            train_blt_main([*common, *wrong])


def test_byte_training_reads_the_text_and_rows_it_is_told(tmp_path, capsys):
    """--limit-chars (both commands), --no-pack and --eval-rows decide the training rows and the validation rows
    scored; --threads sets torch's threads. Each differs from what its default gives (asserted)."""
    import json

    from hf_efficient_lm import BLTForCausalLM
    from hf_efficient_lm.data import read_texts
    from hf_efficient_lm.tools.blt_data import byte_dataset, pack_texts, rows_bits_per_byte
    from hf_efficient_lm.tools.blt_training import train_blt_main, train_entropy_main
    from tests.helpers import write_jsonl

    texts = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(40)]
    train = write_jsonl(tmp_path / "train.jsonl", texts)
    valid = write_jsonl(tmp_path / "valid.jsonl", [t * 3 for t in texts[:8]])
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        train_blt_main([
            "--train-files", str(train), "--valid-files", str(valid), "--space-patching", "--limit-chars", "2000",
            "--no-pack", "--eval-rows", "2", "--threads", "3", "--seq-len", "64", "--max-steps", "1",
            "--batch-size", "2", "--local-hidden", "32", "--latent-hidden", "64", "--latent-layers", "1",
            "--decoder-layers", "1", "--hash-buckets", "31", "--output-dir", str(tmp_path / "blt")])
        assert torch.get_num_threads() == 3
        torch.set_num_threads(threads)
        train_entropy_main(["--train-files", str(train), "--valid-files", "--limit-chars", "2000", "--seq-len", "32",
                            "--max-steps", "1", "--batch-size", "2", "--hidden-size", "32", "--layers", "1",
                            "--heads", "2", "--window", "32", "--threads", "3", "--output-dir", str(tmp_path / "entropy")])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    limited, whole = read_texts([train], 2000, per_file=True), read_texts([train], 4_000_000, per_file=True)

    metrics = json.loads((tmp_path / "blt" / "train_blt_metrics.json").read_text())
    rows = len(byte_dataset(limited, 64, pack=False))
    assert metrics["train_rows"] == rows
    assert rows != len(byte_dataset(limited, 64)) and rows != len(byte_dataset(whole, 64, pack=False))  # (packed; all)
    model = BLTForCausalLM.from_pretrained(tmp_path / "blt").eval()
    scored = pack_texts(read_texts([valid], 200_000), 64)
    assert len(scored) > 16
    assert metrics["bits_per_byte"]["valid"] == pytest.approx(rows_bits_per_byte(model, scored[:2], batch_size=4))
    assert metrics["bits_per_byte"]["valid"] != pytest.approx(rows_bits_per_byte(model, scored[:16], batch_size=4))

    rows = len(byte_dataset(limited, 32))  # train-entropy's rows, as it prints them
    assert f" {rows} training rows of 32 bytes" in capsys.readouterr().out
    assert rows != len(byte_dataset(whole, 32))


def test_train_entropy_is_reproducible_from_its_seed(tmp_path):
    """train-entropy built its model before any seed was set (and had no --seed): two identical runs differed by up
    to 0.13 in a weight. It now takes --seed, like train-blt."""
    import json

    from safetensors.torch import load_file

    from hf_efficient_lm.tools.blt_training import train_entropy_main

    texts = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 3) for i in range(24)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    weights = {}
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / run
        line = train_entropy_main(["--train-files", str(tmp_path / "train.jsonl"), "--valid-files", str(tmp_path / "train.jsonl"),
                                   "--seq-len", "32", "--max-steps", "2", "--batch-size", "2", "--hidden-size", "32",
                                   "--layers", "1", "--heads", "2", "--window", "32", "--seed", str(seed),
                                   "--output-dir", str(out)])
        assert "bits/byte" in line
        weights[run] = load_file(out / "model.safetensors")
        config = json.loads((out / "config.json").read_text())  # the size options reach the model
        assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                config["sliding_window"]) == (32, 1, 2, 32)
    assert all(torch.equal(weights["a"][name], weights["b"][name]) for name in weights["a"])
    assert any(not torch.equal(weights["a"][name], weights["c"][name]) for name in weights["a"])


@pytest.mark.parametrize("command", ["train-blt", "train-entropy"])
def test_a_killed_byte_training_run_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys, command):
    """train-blt and train-entropy saved no checkpoint (a killed run started over); they now checkpoint every
    --save-steps under the run guard of pretrain, and a run killed after checkpoint-2 ends with the weights of an
    uninterrupted one. A run with other options is refused rather than resumed."""
    import json

    from safetensors.torch import load_file

    import hf_efficient_lm.tools.blt_training as blt_training
    from tests.helpers import Killed, trainer_killed_at

    texts = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4) for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    common = ["--train-files", str(tmp_path / "train.jsonl"), "--valid-files", "--seq-len", "32", "--batch-size", "2",
              "--max-steps", "4", "--save-steps", "2", "--learning-rate", "0.01"]
    if command == "train-blt":
        main = blt_training.train_blt_main
        common += ["--space-patching", "--eval-rows", "1", "--local-hidden", "32", "--latent-hidden", "64",
                   "--latent-layers", "1", "--decoder-layers", "1", "--hash-buckets", "31"]
    else:
        main = blt_training.train_entropy_main
        common += ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--window", "32"]
    main([*common, "--output-dir", str(tmp_path / "reference")])

    monkeypatch.setattr(blt_training, "Trainer", trainer_killed_at(blt_training.Trainer, 3))
    with pytest.raises(Killed):
        main([*common, "--output-dir", str(tmp_path / "killed")])
    assert (tmp_path / "killed" / "trainer" / "checkpoint-2").is_dir()
    state = json.loads((tmp_path / "killed" / "trainer" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2  # --batch-size reaches the Trainer, and --learning-rate its first step
    assert [h["learning_rate"] for h in state["log_history"] if "loss" in h][0] == pytest.approx(0.01)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"different run .*seed: 0 -> 1"):
        main([*common, "--seed", "1", "--output-dir", str(tmp_path / "killed")])
    capsys.readouterr()
    main([*common, "--output-dir", str(tmp_path / "killed")])
    assert "resuming from" in capsys.readouterr().out  # (a fresh start would reach the same weights too)
    expected, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("reference", "killed"))
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=0, rtol=0, msg=name)
    assert not (tmp_path / "killed" / "trainer").exists()  # the finished run's folder holds the model only
