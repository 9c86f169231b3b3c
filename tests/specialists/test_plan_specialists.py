"""plan(): the paper's decision figure (Fig. 1) on the paper's own cases, and its cost columns (Tables 2, 3)."""

import json

import pytest

from hf_efficient_lm.cli import main as cli_main
from hf_efficient_lm.specialists import plan
from hf_efficient_lm.tools.specialists_plan import finetune_gpuh


def test_one_domain_that_pays_its_own_pretraining_gets_importance_sampling():
    # Fig. 4: SLM-is at <= 130 GPUh for the domain is the best small model against PN / mix pretrained for 650 GPUh.
    result = plan(650, 130, 1)
    assert result.method == "slm_is"
    assert result.costs["pretraining"] == 0.0
    assert result.costs["specialization_per_domain"] == pytest.approx(130.0)
    assert result.costs["importance_sampled_pretraining_per_domain"] == pytest.approx(130.0 - 0.02)
    assert result.costs["inference"] == 0.61


def test_importance_sampled_pretraining_stops_at_the_papers_largest():
    # 500 GPUh for one domain: the paper never pretrained an SLM-is beyond 130 GPUh, so the rest is not spent
    result = plan(650, 500, 1)
    assert result.method == "slm_is"
    assert result.costs["importance_sampled_pretraining_per_domain"] == 130.0
    assert result.costs["specialization_per_domain"] == pytest.approx(130.0 + 0.02)


def test_many_domains_sharing_one_pretraining_get_the_projected_network():
    # Fig. 6: the same 130 GPUh spread over 50 domains is 2.6 GPUh each: IS's advantage is gone, PN's per-domain cost
    # (one fine-tune, 0.02 GPUh at 1M tokens) is negligible.
    result = plan(650, 130, 50)
    assert result.method == "slm_pn" and result.alternatives == ["slm_mix"]
    assert result.costs["pretraining"] == 650.0
    assert result.costs["specialization_per_domain"] == pytest.approx(0.02)
    assert result.costs["total"] == pytest.approx(650 + 50 * 0.02)  # C_total(N) = C_generic + N * C_spec
    assert result.all_costs["slm_is"]["total"] == pytest.approx(130.0)


def test_table8_smallest_pretraining_nine_domains_one_finetune_each():
    # Table 8 at 100 GPUh: nine Pile domains, each with a 1M-token fine-tune (0.02 GPUh): SLM-pn (18.57) is the
    # recommended small model, the mixture the alternative.
    result = plan(100, 9 * 0.02, 9)
    assert result.method == "slm_pn"
    assert result.costs["pretraining_tokens"] == pytest.approx(100 / 3.6 * 1e9)


def test_large_inference_budget_means_the_large_model():
    result = plan(650, 9 * 3.5, 9, domain_tokens=64e6, inference_budget=2.54)
    assert result.method == "llm"
    assert result.costs["inference"] == 2.54 and result.costs["specialization_per_domain"] == pytest.approx(3.5)
    # but a budget that cannot pay the large model's fine-tune falls back to the small-model branches
    assert plan(650, 9 * 0.5, 9, domain_tokens=64e6, inference_budget=2.54).method == "slm_pn"


def test_no_generic_pretraining_budget_leaves_importance_sampling():
    assert plan(0, 5, 1).method == "slm_is"


def test_specialization_budget_threshold_moves_with_the_number_of_domains():
    # per-domain budget 20 GPUh vs 0.2 x 100 GPUh pretraining: exactly at the break-even -> IS; one more domain -> PN
    assert plan(100, 40, 2).method == "slm_is"
    assert plan(100, 40, 3).method == "slm_pn"


def test_finetune_costs_are_the_papers_points_and_grow_with_data():
    assert finetune_gpuh(1e6) == pytest.approx(0.02)
    assert finetune_gpuh(8e6) == pytest.approx(0.07)
    assert finetune_gpuh(64e6) == pytest.approx(0.5)
    assert finetune_gpuh(8e6, large=True) == pytest.approx(0.5)
    assert 0.02 < finetune_gpuh(3e6) < 0.07


@pytest.mark.parametrize("kwargs, message", [
    ({"pretraining_budget": -1}, "pretraining_budget"),
    ({"specialization_budget": float("nan")}, "specialization_budget"),
    ({"num_domains": 0}, "num_domains"),
    ({"domain_tokens": 1e9}, "domain_tokens"),
    ({"inference_budget": 0.1}, "inference_budget"),
    ({"specialization_budget": 0.01}, "less than one fine-tune"),
])
def test_bad_budgets_are_named(kwargs, message):
    args = {"pretraining_budget": 650, "specialization_budget": 1.0, "num_domains": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan(args.pop("pretraining_budget"), args.pop("specialization_budget"), args.pop("num_domains"), **args)


def test_cli_prints_the_plan(capsys):
    cli_main(["plan-specialists", "--pretraining-budget", "650", "--specialization-budget", "130",
              "--num-domains", "1"])
    assert json.loads(capsys.readouterr().out)["method"] == "slm_is"
    # --domain-tokens and --inference-budget reach plan(): the default inference budget rules the large model out,
    # and the default 1M tokens make its fine-tune cheaper
    cli_main(["plan-specialists", "--pretraining-budget", "650", "--specialization-budget", "31.5",
              "--num-domains", "9", "--domain-tokens", "64e6", "--inference-budget", "2.54"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == plan(650, 31.5, 9, domain_tokens=64e6, inference_budget=2.54).to_dict()
    assert printed["method"] == "llm" and plan(650, 31.5, 9, domain_tokens=64e6).method == "slm_pn"
    assert printed["costs"]["finetune_per_domain"] == pytest.approx(3.5)
    assert plan(650, 31.5, 9, inference_budget=2.54).costs["finetune_per_domain"] < 3.5
