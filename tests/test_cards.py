"""Issue #15, "model cards a Hub user can trust": every family's card is filled from the saved folder (config, the
family's metrics file) and flags; no placeholder survives; a template for another model is refused; the staging dir
must be empty; a dry run prints the card."""

import json
import re

import pytest
import torch

from hf_efficient_lm.hub import CardInfo, publish
from hf_efficient_lm.testing_utils import make_tiny_llama
from tests.helpers import FakeHfApi, assert_one_line_error, run_cli

PLACEHOLDERS = [r"\bNone\b", r"(?<![`\w])\?(?![`\w])", r"see config\.json", r"see the metadata", r"\bS f-grams",
                r"\?-layer", r"No evaluation recorded", r"Anchor mode: ep \(.*AC"]


def _save(model, folder, metrics_file=None, metrics=None):
    model.save_pretrained(folder)
    if metrics_file:
        (folder / metrics_file).write_text(json.dumps(metrics))
    return folder


def _family_folders(root):
    from tests.contract.case_specialists import make_hyper, make_mixture

    from hf_efficient_lm.anchor import AnchorLlamaForCausalLM
    from hf_efficient_lm.scone import SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
    from hf_efficient_lm.tools.blt_testing import make_tiny_blt
    from hf_efficient_lm.testing_utils import save_tiny_llama

    common = {"data_files": ["pydocs.train.jsonl.gz"], "steps": 6, "train_tokens": 768, "learning_rate": 0.01,
              "seed": 0}
    yield "llama_base", _save(make_tiny_llama(), root / "llama", "pretrain_metrics.json",
                              {**common, "preset": "tiny", "eval_perplexity": 40.5, "eval_loss": 3.7})
    base = save_tiny_llama(root / "base")
    anchor = AnchorLlamaForCausalLM.from_pretrained(base, anchor_token_ids=[5], anchor_mode="ac", anchor_token="<AC>")
    yield "anchor", _save(anchor, root / "anchor", "anchor_train_metrics.json",
                          {**common, "base_model": "me/base-5m", "eval_perplexity_ansan": 41.0})
    ids = torch.randint(3, 128, (20, 40), generator=torch.Generator().manual_seed(0)).tolist()
    vocab = mine_fgrams(ids + ids, num_fgrams=8, min_count=2, vocab_size=128, show_progress=False)
    scone = SconeLlamaForCausalLM.from_pretrained(base, fgram_vocab=vocab, fgram_num_layers=1)
    export_fgram_table(scone, root / "scone" / "table", dtype=torch.float32)
    (root / "scone" / "train_scone_metrics.json").write_text(json.dumps({**common, "base_model": "me/base-5m"}))
    (root / "scone" / "eval_scone.json").write_text(json.dumps({"valid.jsonl": {"scone_ppl": 30.1, "base_ppl": 31.0}}))
    yield "scone", root / "scone" / "table"
    yield "blt", _save(make_tiny_blt(), root / "blt", "train_blt_metrics.json",
                       {**common, "mean_patch_size": 4.4, "bits_per_byte": {"code": 2.1}, "train_bytes": 3e6,
                        "flops_per_byte": 2.5e6})
    yield "specialist_mixture", _save(make_mixture(), root / "mixture")
    yield "specialist_hyper", _save(make_hyper(), root / "hyper")


def test_every_family_card_is_filled_from_the_folder(tmp_path):
    for template, folder in _family_folders(tmp_path):
        extra_metrics = [] if "specialist" not in template else [("domain", "perplexity", 20.0)]
        result = publish(folder, f"me/{template}", card_template=template, api=FakeHfApi(),
                         card_info=CardInfo(model_id=f"me/{template}", datasets=["pydocs"] if extra_metrics else [],
                                            metrics=extra_metrics, base_model="me/base-5m"))
        body = result.card.split("---", 2)[2]
        for pattern in PLACEHOLDERS:
            found = re.search(pattern, body)
            assert found is None, (template, pattern, body[max(0, found.start() - 120): found.end() + 80])
        assert "me/base-5m" in result.card
        assert "license: other" in result.card
    anchor_card = publish(tmp_path / "anchor", "me/a", card_template="anchor", api=FakeHfApi()).card
    assert "Anchor mode: ac" in anchor_card and "41" in anchor_card


def test_wrong_template_and_non_empty_staging_dir_are_refused_and_dry_run_prints_the_card(tmp_path):
    folder = tmp_path / "llama"
    make_tiny_llama().save_pretrained(folder)
    (folder / "pretrain_metrics.json").write_text(json.dumps({"preset": "tiny", "train_tokens": 100,
                                                             "data_files": ["wiki.jsonl"], "eval_perplexity": 9.5}))
    with pytest.raises(ValueError, match="describes hfelm_scone_llama models but this folder holds a 'llama'"):
        publish(folder, "me/x", card_template="scone", api=FakeHfApi())
    stale = tmp_path / "stage"
    stale.mkdir()
    (stale / "old-model.safetensors").write_bytes(b"x")
    assert_one_line_error(run_cli("publish", "--model", str(folder), "--repo-id", "me/x", "--dry-run",
                                  "--staging-dir", str(stale)), "is not empty")
    result = run_cli("publish", "--model", str(folder), "--repo-id", "me/x", "--dry-run", "--license", "gfdl",
                     "--staging-dir", str(tmp_path / "new-stage"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[dry run] README.md (llama_base template)" in result.stderr and "wiki.jsonl" in result.stderr
    assert "license: gfdl" in result.stderr and "9.5" in result.stderr
    assert (tmp_path / "new-stage" / "README.md").read_text() in result.stderr


def test_cards_have_intended_use_and_training_procedure_from_the_run(tmp_path):
    for template, folder in _family_folders(tmp_path):
        card = publish(folder, f"me/{template}", card_template=template, api=FakeHfApi()).card
        assert "## Intended use" in card and "## Training procedure" in card, template
        procedure = card.split("## Training procedure", 1)[1].split("\n## ", 1)[0]
        if template.startswith("specialist"):  # these folders carry no training metrics file
            assert "records no training run" in procedure, procedure
        else:
            assert "optimizer steps 6" in procedure and "peak learning rate 0.01" in procedure, (template, procedure)
            assert "pydocs.train.jsonl.gz" in procedure, (template, procedure)


def test_cards_read_make_base_held_out_results_and_count_what_the_accelerator_runs(tmp_path):
    """make_base.py records per-domain results under held_out, which the card never read ("No evaluation recorded");
    a training-mode SCONE folder's card counted A_f's weights as accelerator parameters "the same as the base model"."""
    from hf_efficient_lm.scone import SconeLlamaForCausalLM, mine_fgrams
    from hf_efficient_lm.testing_utils import save_tiny_llama

    held_out = {"code": {"perplexity": 41.5, "bits_per_byte": 2.25}, "fortunes": {"perplexity": 60.25}}
    folder = _save(make_tiny_llama(), tmp_path / "base", "base_metrics.json",
                   {"preset": "tiny", "train_tokens": 2048, "token_budget": 2000, "seed": 0, "held_out": held_out})
    card = publish(folder, "me/base", card_template="llama_base", api=FakeHfApi()).card
    assert "No evaluation recorded" not in card
    for value in ("41.5", "2.25", "60.25"):
        assert value in card

    base = save_tiny_llama(tmp_path / "llama")
    ids = torch.randint(3, 128, (20, 40), generator=torch.Generator().manual_seed(0)).tolist()
    vocab = mine_fgrams(ids + ids, num_fgrams=8, min_count=2, vocab_size=128, show_progress=False)
    scone = SconeLlamaForCausalLM.from_pretrained(base, fgram_vocab=vocab, fgram_num_layers=1)
    scone.save_pretrained(tmp_path / "scone")
    main = sum(p.numel() for name, p in scone.named_parameters() if ".fgram_model." not in name)
    fgram = sum(p.numel() for name, p in scone.named_parameters() if ".fgram_model." in name)
    assert fgram > 0
    card = publish(tmp_path / "scone", "me/scone", card_template="scone", api=FakeHfApi()).card
    line = next(line for line in card.splitlines() if line.startswith("- Accelerator parameters"))
    assert f"{main / 1e6:.2f}" in line and f"{fgram / 1e6:.2f}" in line and "once the table is exported" in line


def test_specialist_cards_state_the_parameters_one_deployed_cluster_runs(tmp_path):
    """The specialists' headline: inference costs one expert (mixture) or one materialised Llama (projected
    network). The cards must give exactly the parameters of ``instantiate(cluster=0)``, not the whole model's."""
    from tests.contract.case_specialists import make_hyper, make_mixture

    for template, model, label in (("specialist_mixture", make_mixture(), "- Experts:"),
                                   ("specialist_hyper", make_hyper(), "- Total parameters:")):
        folder = _save(model, tmp_path / template)
        deployed = sum(p.numel() for p in model.instantiate(cluster=0).parameters())
        total = sum(p.numel() for p in model.parameters())
        assert deployed < total
        card = publish(folder, f"me/{template}", card_template=template, api=FakeHfApi()).card
        line = next(line for line in card.splitlines() if line.startswith(label))
        assert f"{deployed / 1e6:.2f} M" in line, (template, line, deployed)
