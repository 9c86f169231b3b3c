"""SCONE folders through AutoModel (base model with its vocabulary), output_loading_info, compile flag (issue 11.3)."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from hf_efficient_lm.scone import SconeLlamaForCausalLM, SconeLlamaModel, export_fgram_table
from hf_efficient_lm.scone.fgram_vocab_scone import INDEX_FILE
from hf_efficient_lm.testing_utils import save_tiny_llama


@pytest.fixture(scope="module")
def scone_dirs(tmp_path_factory, vocab):
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    model = SconeLlamaForCausalLM.from_pretrained(save_tiny_llama(root / "llama"), fgram_vocab=vocab,
                                                  fgram_fusion="gated", fgram_num_layers=1).eval()
    with torch.no_grad():
        model.model.fgram_gate.normal_()
    model.save_pretrained(root / "model")
    table = export_fgram_table(model, root / "table", show_progress=False)
    return {"model": root / "model", "table": table, "causal_lm": model}


@pytest.fixture
def batch(docs):
    return torch.tensor([d[:12] for d in docs if len(d) >= 12][:2])


@pytest.mark.parametrize("kind", ["model", "table"])
@torch.no_grad()
def test_automodel_loads_base_model_with_vocabulary_and_saves_it(scone_dirs, batch, kind, tmp_path):
    causal_lm = scone_dirs["causal_lm"]
    base = AutoModel.from_pretrained(scone_dirs[kind]).eval()
    assert isinstance(base, SconeLlamaModel) and base.fgram_vocab is not None
    assert (base.fgram_table is not None) == (kind == "table")
    expected = causal_lm.model(batch).last_hidden_state
    torch.testing.assert_close(base(batch).last_hidden_state, expected, atol=1e-5, rtol=0)
    base.save_pretrained(tmp_path / "base")
    assert (tmp_path / "base" / INDEX_FILE).is_file()
    again = SconeLlamaModel.from_pretrained(tmp_path / "base").eval()
    torch.testing.assert_close(again(batch).last_hidden_state, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("loader", [SconeLlamaForCausalLM, AutoModelForCausalLM, AutoModel])
def test_output_loading_info(scone_dirs, loader):
    model, info = loader.from_pretrained(scone_dirs["model"], output_loading_info=True)
    assert model.fgram_vocab is not None
    assert info["missing_keys"] == set() or not info["missing_keys"]


def test_output_loading_info_when_wrapping_llama(scone_dirs, vocab):
    llama_dir = scone_dirs["model"].parent / "llama"
    model, info = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, output_loading_info=True)
    assert model.fgram_vocab is vocab
    assert any(key.startswith("model.fgram_model.") for key in info["missing_keys"])


def test_no_fullgraph_compile_claim():
    # data-dependent control flow (which positions matched an f-gram, where windows start)
    assert SconeLlamaForCausalLM._can_compile_fullgraph is False
    assert SconeLlamaModel._can_compile_fullgraph is False
