"""`hf-efficient-lm scone-mine` / `scone-export` end to end on a tiny corpus."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from hf_efficient_lm.scone import FgramVocab, SconeLlamaForCausalLM
from hf_efficient_lm.tools.scone_cli import add_scone_subcommands
from tests.scone.conftest import make_word_tokenizer


def _run(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_scone_subcommands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    args.func(args)


@pytest.fixture
def llama_dir_16(tmp_path):
    """A model-mode SconeLlama over a tiny Llama with a 16-token word tokenizer, and that tokenizer."""
    from hf_efficient_lm.scone import mine_fgrams
    from hf_efficient_lm.testing_utils import save_tiny_llama

    tokenizer = make_word_tokenizer("the cat sat on a mat and dog ran".split())
    ids = [tokenizer("the cat sat on the mat and the dog ran", add_special_tokens=False)["input_ids"]] * 4
    vocab = mine_fgrams(ids, num_fgrams=6, max_len=3, min_count=2, tokenizer=tokenizer, show_progress=False)
    llama = save_tiny_llama(tmp_path / "llama", vocab_size=16)
    return SconeLlamaForCausalLM.from_pretrained(llama, fgram_vocab=vocab, fgram_num_layers=1), tokenizer


def test_scone_mine_and_export(tmp_path, capsys):
    from hf_efficient_lm.testing_utils import save_tiny_llama

    words = "the cat sat on a mat and dog ran".split()
    tokenizer = make_word_tokenizer(words)
    tokenizer.save_pretrained(tmp_path / "tok")
    texts = ["the cat sat on the mat", "the dog ran on a mat and the cat sat"] * 5
    with open(tmp_path / "docs.jsonl", "w") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    _run(["scone-mine", "--tokenizer", str(tmp_path / "tok"), "--data-files", str(tmp_path / "docs.jsonl"),
          "--num-fgrams", "12", "--max-len", "3", "--min-count", "3", "--max-documents", "6", "--num-threads", "2",
          "--output-dir", str(tmp_path / "fgrams")])
    assert json.loads(capsys.readouterr().out)["num_fgrams"] == 12
    vocab = FgramVocab.load(tmp_path / "fgrams", tokenizer=tokenizer)
    assert vocab.barrier_ids == (0, 1, 2)
    # the options reach the miner: K, the count threshold, the first 6 documents (3 x 6 + 3 x 10 words)
    assert vocab.max_len == 3 and vocab.extra_metadata["min_count"] == 3 and int(vocab.counts.min()) >= 3
    assert vocab.extra_metadata["num_tokens_mined"] == 48
    assert vocab.row_of(tokenizer("the cat sat", add_special_tokens=False)["input_ids"]) >= 0

    llama = save_tiny_llama(tmp_path / "llama", vocab_size=16)
    tokenizer.save_pretrained(llama)
    SconeLlamaForCausalLM.from_pretrained(llama, fgram_vocab=vocab, fgram_num_layers=1).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    _run(["scone-export", "--model", str(tmp_path / "m"), "--output-dir", str(tmp_path / "t"), "--dtype", "float32"])
    table_model = SconeLlamaForCausalLM.from_pretrained(tmp_path / "t")
    assert table_model.config.fgram_mode == "table" and table_model.fgram_table.dtype == torch.float32
    # the model folder's tokenizer came with the table folder, which is evaluated and published on its own
    assert AutoTokenizer.from_pretrained(tmp_path / "t").get_vocab() == tokenizer.get_vocab()


def test_export_writes_the_tokenizer_inside_the_folder_that_appears_whole(tmp_path, llama_dir_16, monkeypatch):
    """``export_fgram_table(..., tokenizer=)``: the tokenizer is saved before the folder appears, so a failure there
    leaves no table folder without its tokenizer (``scone-export`` and ``train-scone`` added it afterwards)."""
    from hf_efficient_lm.scone import export_fgram_table

    model, tokenizer = llama_dir_16
    export_fgram_table(model, tmp_path / "whole", show_progress=False, tokenizer=tokenizer)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "whole")) == len(tokenizer)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_fgram_table(model, tmp_path / "broken", show_progress=False, tokenizer=tokenizer)
    assert not (tmp_path / "broken").exists()
