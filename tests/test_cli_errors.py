"""Issue #15, "clear errors at every entry point": each CLI mistake is one line naming it, exit status 2."""

import gzip
import json
import os
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, make_documents, run_cli, write_jsonl


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (chmod 0500; as root, where root cannot write either)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    for candidate in (Path("/sys/fs"), Path("/proc/self")):
        try:
            (candidate / ".hfelm-probe").mkdir()
        except OSError:
            return candidate
        (candidate / ".hfelm-probe").rmdir()
    pytest.skip("no folder is read-only for root here")


@pytest.mark.parametrize("name, content, needle", [
    ("empty.jsonl", b"", "is empty"),
    ("latin1.jsonl", json.dumps({"text": "caf\u00e9"}).encode("latin-1").replace(b"\\u00e9", b"\xe9") + b"\n",
     "is not UTF-8 text"),
    ("broken.jsonl", b'{"text": "fine"}\n{"text": "oops\n', "malformed JSON on line 2"),
    ("empty.jsonl.gz", gzip.compress(b"\n\n"), "is empty"),
])
def test_unreadable_data_files_are_named(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    result = run_cli("train-tokenizer", "--data-files", str(path), "--vocab-size", "300",
                     "--output-dir", str(tmp_path / "tok"))
    assert_one_line_error(result, needle, name)
    assert not (tmp_path / "tok").exists()


def test_local_path_typos_read_only_output_and_debug(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", make_documents(20))
    typo = str(tmp_path / "runs" / "base" / "finall")
    assert_one_line_error(run_cli("evaluate", "--model", typo, "--data-files", str(data)),
                          f"model folder '{typo}' does not exist")
    assert_one_line_error(run_cli("pretrain", "--tokenizer", "./tok-typo", "--data_files", str(data),
                                  "--output_dir", str(tmp_path / "run")),
                          "tokenizer folder './tok-typo' does not exist")

    # checked before the tokenizer is trained, not after
    read_only = _read_only_dir(tmp_path)
    assert_one_line_error(run_cli("train-tokenizer", "--data-files", str(data), "--output-dir",
                                  str(read_only / "tok")), "cannot write to", "not writable")

    # --debug (or HFELM_DEBUG=1) keeps the traceback for bug reports
    result = run_cli("--debug", "evaluate", "--model", typo, "--data-files", str(data), fresh_process=True)
    assert result.returncode != 0 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_underscore_and_dash_spellings_work_in_every_subcommand(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", make_documents(30), column="body")
    result = run_cli("train-tokenizer", "--data_files", str(data), "--text_column", "body", "--vocab_size", "300",
                     "--output_dir", str(tmp_path / "tok"), "--max_documents", "20")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    # the flag the missing-column message names exists in this subcommand
    result = run_cli("train-tokenizer", "--data-files", str(data), "--output-dir", str(tmp_path / "tok2"))
    line = assert_one_line_error(result, "no text column 'text'", "--text_column")
    assert "['body']" in line


def test_scone_export_refuses_to_overwrite_its_model_and_copies_the_tokenizer(tmp_path):
    from hf_efficient_lm.scone import FgramVocab, SconeLlamaForCausalLM, mine_fgrams  # noqa: F401
    from hf_efficient_lm.data import iter_texts, train_tokenizer
    from datasets import Dataset

    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(30)})), 280, show_progress=False)
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in make_documents(30)]
    vocab = mine_fgrams(ids, num_fgrams=16, min_count=2, tokenizer=tokenizer, show_progress=False)
    from hf_efficient_lm.testing_utils import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", vocab_size=len(tokenizer))
    model = SconeLlamaForCausalLM.from_pretrained(base, fgram_vocab=vocab, fgram_num_layers=1)
    model.save_pretrained(tmp_path / "train")
    tokenizer.save_pretrained(tmp_path / "train")
    before = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert_one_line_error(run_cli("scone-export", "--model", str(tmp_path / "train"), "--output-dir",
                                  str(tmp_path / "train")), "would replace the training checkpoint")
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == before
    result = run_cli("scone-export", "--model", str(tmp_path / "train"), "--output-dir", str(tmp_path / "table"),
                     "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "table" / "tokenizer.json").exists() and (tmp_path / "table" / "fgram_table.safetensors").exists()
