"""`accelerate launch` guards and the shared text reader used by the training examples."""

import pytest

from hf_efficient_lm.data import read_texts
from hf_efficient_lm.train import check_world_size, launched_processes
from tests.helpers import make_documents, write_jsonl


def test_world_size_must_match_the_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1
    check_world_size(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world_size(2)
    with pytest.raises(RuntimeError, match="2 processes were launched but the Trainer sees world size 1"):
        check_world_size(1)


def test_read_texts_keeps_file_order_and_stops_at_the_limit(tmp_path):
    first, second = make_documents(3), make_documents(3, seed=1)
    files = [str(write_jsonl(tmp_path / "a.jsonl", first)), str(write_jsonl(tmp_path / "b.jsonl", second))]
    assert read_texts(files) == first + second
    assert read_texts(files, limit_chars=len(first[0]) + 1) == first[:2]
