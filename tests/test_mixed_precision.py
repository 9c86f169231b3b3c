"""Issue #16 item 2: under bf16 autocast training the integer paths stay integer-exact: BLT's n-gram hash rows and
SCONE's f-gram matches are the very ids of the fp32 forward (the contract's bf16 check covers the losses)."""

import pytest
import torch

from hf_efficient_lm.blt import modeling_blt_lm
from hf_efficient_lm.scone import FgramVocab
from tests.contract.test_contract import CASES, _ids

CASE = {case.name: case for case in CASES}


def _recorded(monkeypatch, owner, name, model, ids, bf16: bool) -> list[torch.Tensor]:
    """Every result of ``owner.name`` during one training forward (bf16 autocast or fp32)."""
    original, seen = getattr(owner, name), []

    def record(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(owner, name, record)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    monkeypatch.setattr(owner, name, original)
    return seen


@pytest.mark.parametrize("case_name, owner, name", [
    ("blt", modeling_blt_lm, "byte_ngram_hash_ids"),
    ("scone", FgramVocab, "match"),
])
def test_integer_paths_are_exact_under_bf16_autocast(monkeypatch, case_name, owner, name):
    model = CASE[case_name].make_model().train()
    ids = _ids(CASE[case_name], batch=4, length=16)
    fp32 = _recorded(monkeypatch, owner, name, model, ids, bf16=False)
    bf16 = _recorded(monkeypatch, owner, name, model, ids, bf16=True)
    flat = [t for result in fp32 for t in (result if isinstance(result, tuple) else (result,))]
    flat_bf16 = [t for result in bf16 for t in (result if isinstance(result, tuple) else (result,))]
    assert flat and len(flat) == len(flat_bf16)
    for a, b in zip(flat, flat_bf16):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
    assert any(t.unique().numel() > 2 for t in flat)  # not a degenerate all-equal result
