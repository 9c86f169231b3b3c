import pytest
from datasets import Dataset

from hf_efficient_lm.data import check_vocab_fits, iter_texts, load_text_dataset, pack_dataset, train_tokenizer
from tests.helpers import make_documents, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(80)})), 300, show_progress=False)


def test_tokenizer_has_fixed_special_ids_and_round_trips_any_text(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 300
    for text in ["Alpha beta.", "ünïcödé ✓ 日本語 \t\n  spaces", "\x00\x7f bytes"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_documents_are_text_even_where_they_spell_a_special_token(tokenizer):
    """A literal "</s>" inside a document stays text (split_special_tokens): as the EOS id it became a document
    boundary in training and a zero-byte token in bits-per-byte, though its 4 bytes were counted."""
    from hf_efficient_lm.data import encode_documents
    from hf_efficient_lm.eval import evaluate_causal_lm
    from hf_efficient_lm.testing_utils import make_tiny_llama

    docs = ["Alpha </s> beta <s> gamma.", "Delta <pad> epsilon."]
    assert encode_documents(tokenizer, []) == []  # (an IndexError from inside the tokenizer)
    special = set(tokenizer.all_special_ids)
    for ids, doc in zip(encode_documents(tokenizer, docs), docs):
        assert not special & set(ids) and tokenizer.decode(ids) == doc
    assert special & set(tokenizer(docs[0], add_special_tokens=False)["input_ids"])  # what the default does
    packed = pack_dataset(Dataset.from_dict({"text": docs * 8}), tokenizer, 16)
    eos_count = sum(row.count(tokenizer.eos_token_id) for row in packed["input_ids"])
    assert eos_count <= 16  # one per document (the tail is dropped), none from the text
    result = evaluate_causal_lm(make_tiny_llama(vocab_size=300), tokenizer, docs, block_size=64, show_progress=False)
    assert result.tokens == sum(len(ids) + 1 for ids in encode_documents(tokenizer, docs))  # + one EOS each
    assert result.bytes == sum(len(doc.encode()) for doc in docs)


def test_tokenizer_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([["abc"]], 100, show_progress=False)


def test_pack_dataset_makes_full_blocks_with_eos_between_documents(tokenizer):
    docs = make_documents(20)
    packed = pack_dataset(Dataset.from_dict({"text": docs}), tokenizer, 32)
    stream = [i for d in docs for i in (*tokenizer(d, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)]
    assert len(packed) == len(stream) // 32
    flat = [i for block in packed["input_ids"] for i in block]
    assert flat == stream[: len(flat)]
    assert packed["labels"] == packed["input_ids"]


def test_load_text_dataset_from_jsonl_and_clear_errors(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    assert load_text_dataset(str(path))["text"] == ["one", "two"]
    with pytest.raises(ValueError, match=r"no text column 'body'.*\['text'\]"):
        load_text_dataset(str(path), text_column="body")
    (tmp_path / "a.docx").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_text_dataset(str(tmp_path / "a.docx"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_dataset(str(tmp_path / "missing.jsonl"))


def test_vocab_mismatch_is_named(tokenizer):
    with pytest.raises(ValueError, match="vocab mismatch.*300 tokens.*vocab_size is 128"):
        check_vocab_fits(tokenizer, 128)


def test_pack_ids_separates_documents_prefixes_rows_and_keeps_or_drops_the_tail():
    from hf_efficient_lm.data import pack_ids

    docs = [[5, 6, 7], [8], [9, 10, 11, 12]]
    assert pack_ids(docs, 4, separator=2).tolist() == [[5, 6, 7, 2], [8, 2, 9, 10]]
    assert pack_ids(docs, 3, row_prefix=1).tolist() == [[1, 5, 6], [1, 7, 8], [1, 9, 10], [1, 11, 12]]
    rows = pack_ids(docs, 5, separator=2, drop_remainder=False)
    assert [list(map(int, r)) for r in rows] == [[5, 6, 7, 2, 8], [2, 9, 10, 11, 12], [2]]
    rows = pack_ids(docs, 4, row_prefix=1, drop_remainder=False)  # the shorter last row opens with the prefix too
    assert [list(map(int, r)) for r in rows] == [[1, 5, 6, 7], [1, 8, 9, 10], [1, 11, 12]]
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        pack_ids(docs, 1)


def test_read_texts_streams_jsonl_and_stops_at_either_limit(tmp_path):
    import gzip
    import json

    from hf_efficient_lm.data import read_texts

    texts = make_documents(10)
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    assert read_texts(path) == texts
    assert read_texts([path], limit_docs=3) == texts[:3]
    assert read_texts([path], limit_chars=len(texts[0]) + 1) == texts[:2]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"other {i}"}) + "\n" for i in range(4)))
    # a budget over several files is split between them, not spent on the first
    assert read_texts([path, other], limit_docs=4, per_file=True) == texts[:2] + ["other 0", "other 1"]
    assert read_texts([path, other], limit_docs=4) == texts[:4]
    # shares sum to the limit (rounded-up shares read 3 documents for limit_docs=1 over 3 files, 6 for 4)
    assert read_texts([path, other, path], limit_docs=1, per_file=True) == texts[:1]
    assert read_texts([path, other, path], limit_docs=4, per_file=True) == texts[:2] + ["other 0", texts[0]]
    assert read_texts([path], limit_docs=0) == []  # (returned one document)
    with pytest.raises(ValueError, match="limit_chars must be positive"):
        read_texts([path], limit_chars=0)  # (meant "no limit")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_texts([tmp_path / "missing.jsonl"])


def test_corpus_texts_reads_a_domain_split_from_the_default_or_a_given_corpus(tmp_path, monkeypatch):
    import gzip
    import json

    from hf_efficient_lm.data import corpus_texts

    texts = make_documents(6)
    for folder, split in ((tmp_path / "env", "train"), (tmp_path / "given", "valid")):
        folder.mkdir()
        with gzip.open(folder / f"code.{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    monkeypatch.setenv("HFELM_CORPUS", str(tmp_path / "env"))
    assert corpus_texts("code") == texts
    assert corpus_texts("code", "valid", corpus=tmp_path / "given", limit_chars=len(texts[0]) + 1) == texts[:2]
    with pytest.raises(FileNotFoundError, match="code.valid.jsonl.gz not found"):
        corpus_texts("code", "valid")  # the default corpus has no valid split
