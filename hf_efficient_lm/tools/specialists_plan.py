"""``plan()``: which specialist method the paper recommends for given budgets, and what it costs.

Grangier et al., "Need a Small Specialized Language Model? Plan Early!" (arXiv 2402.01093v2), Fig. 1 as a decision
tree (spec ../shared/specs/specialists.md, section 4):

    inference budget large?                          -> LLM: train / fine-tune a large model
    else specialization budget large (few domains)?  -> SLM-is: importance-sampled pretraining, then fine-tune
    else (many domains, cheap per-domain step)       -> SLM-pn (or SLM-mix): pick an expert, then fine-tune

All budgets are in the paper's unit, A100 GPU-hours (GPUh). The costs come from the paper's Tables 2 and 3:

==========  =================  =====================  ======================  ========================
method      pretrain GPUh/1B   fine-tune GPUh, 1M/8M  inference GPUh/1B tok.  pretraining paid
                               /64M domain tokens
==========  =================  =====================  ======================  ========================
SLM         2.2                0.02 / 0.07 / 0.5      0.61 (126M params)      once, shared by domains
SLM-mix     2.2                0.02 / 0.07 / 0.5      0.61                    once, shared by domains
SLM-pn      3.6                0.02 / 0.07 / 0.5      0.61                    once, shared by domains
SLM-is      -                  0.02 / 0.07 / 0.5      0.61                    per domain (<= 130 GPUh)
LLM         7.7                0.12 / 0.5 / 3.5       2.54 (771M params)      once, shared by domains
==========  =================  =====================  ======================  ========================

Serving N domains costs ``C_total(N) = C_pretraining + N * C_specialization`` (section 1 of the spec).

What "large" means is not a number in the paper's Fig. 1; this module makes it one **[ours]**:

- inference budget large: at least the LLM's inference cost (2.54 GPUh per 1B tokens).
- specialization budget large: the per-domain budget (``specialization_budget / num_domains``) buys an
  importance-sampled pretraining of at least ``IS_BREAK_EVEN = 130 / 650 = 0.2`` times the shared pretraining
  budget. The ratio is the paper's own operating point: SLM-is at <= 130 GPUh per domain is the best small model
  after fine-tuning against SLM-pn / SLM-mix pretrained for up to 650 GPUh (Fig. 4, Table 8), so a domain that can
  pay a fifth of the shared pretraining is in the IS regime; with more domains the same total buys less per domain
  and the shared pretraining wins (Fig. 6).
- between PN and the mixture the paper prefers PN ("PN edges out the mixture on average and lets capacity be chosen
  freely"; Table 8: PN is ahead at 100 and 200 GPUh); the mixture is returned as the alternative.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# Tables 2 and 3 of the paper (A100 GPUh).
PRETRAIN_GPUH_PER_1B = {"slm": 2.2, "slm_mix": 2.2, "slm_pn": 3.6, "slm_is": 0.0, "llm": 7.7}
INFERENCE_GPUH_PER_1B = {"slm": 0.61, "slm_mix": 0.61, "slm_pn": 0.61, "slm_is": 0.61, "llm": 2.54}
INFERENCE_PARAMS = {"slm": 126e6, "slm_mix": 126e6, "slm_pn": 126e6, "slm_is": 126e6, "llm": 771e6}
FINETUNE_TOKENS = (1e6, 8e6, 64e6)
FINETUNE_GPUH = {"small": (0.02, 0.07, 0.5), "llm": (0.12, 0.5, 3.5)}
IS_PRETRAINING_CAP_GPUH = 130.0  # the largest importance-sampled pretraining in the paper
SHARED_PRETRAINING_CAP_GPUH = 650.0  # the largest PN / mixture / LLM pretraining in the paper (Table 8)
IS_BREAK_EVEN = IS_PRETRAINING_CAP_GPUH / SHARED_PRETRAINING_CAP_GPUH  # [ours], see the module docstring
METHODS = ("slm", "slm_mix", "slm_pn", "slm_is", "llm")


def finetune_gpuh(domain_tokens: float, *, large: bool = False) -> float:
    """Fine-tuning cost (GPUh) on ``domain_tokens`` in-domain tokens: the paper's 1M / 8M / 64M points, log-log
    interpolated in between (the cost grows ~10x when the data grows 8x, Fig. 9)."""
    if not isinstance(domain_tokens, (int, float)) or not FINETUNE_TOKENS[0] <= domain_tokens <= FINETUNE_TOKENS[-1]:
        raise ValueError(f"domain_tokens={domain_tokens!r} is outside the paper's range [1e6, 64e6] of in-domain "
                         "training tokens, where its fine-tuning costs are measured")
    costs = FINETUNE_GPUH["llm" if large else "small"]
    logs = [math.log(t) for t in FINETUNE_TOKENS]
    x = math.log(domain_tokens)
    i = 0 if x <= logs[1] else 1
    slope = (math.log(costs[i + 1]) - math.log(costs[i])) / (logs[i + 1] - logs[i])
    return math.exp(math.log(costs[i]) + slope * (x - logs[i]))


@dataclass
class SpecialistPlan:
    """The recommendation and its cost columns (GPUh; ``inference`` in GPUh per 1B generated/scored tokens)."""

    method: str
    reason: str
    alternatives: list[str]
    costs: dict  # {"pretraining", "specialization_per_domain", "specialization_total", "total", "inference", ...}
    all_costs: dict = field(default_factory=dict)  # the same columns for every method, for comparison

    def to_dict(self) -> dict:
        return asdict(self)


def _check_budget(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of GPU-hours >= 0, got {value!r}")
    return float(value)


def method_costs(method: str, pretraining_budget: float, per_domain_budget: float, num_domains: int,
                 domain_tokens: float) -> dict:
    """Cost columns of ``method`` when it spends the budgets as the paper does (GPUh)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; choose one of {METHODS}")
    finetune = finetune_gpuh(domain_tokens, large=method == "llm")
    if method == "slm_is":
        # No shared pretraining: the per-domain budget pays the resampled pretraining (up to the paper's cap) and
        # the fine-tune; every new domain pays it again.
        pretraining = 0.0
        is_pretraining = min(max(per_domain_budget - finetune, 0.0), IS_PRETRAINING_CAP_GPUH)
        specialization = is_pretraining + finetune
    else:
        pretraining, is_pretraining, specialization = pretraining_budget, 0.0, finetune
    tokens = 1e9 * pretraining / PRETRAIN_GPUH_PER_1B[method] if pretraining else 0.0
    return {
        "pretraining": pretraining,
        "pretraining_tokens": tokens,
        "specialization_per_domain": specialization,
        "importance_sampled_pretraining_per_domain": is_pretraining,
        "finetune_per_domain": finetune,
        "specialization_total": num_domains * specialization,
        "total": pretraining + num_domains * specialization,
        "inference": INFERENCE_GPUH_PER_1B[method],
        "inference_params": INFERENCE_PARAMS[method],
    }


def plan(pretraining_budget: float, specialization_budget: float, num_domains: int, *,
         domain_tokens: float = 1e6, inference_budget: float = INFERENCE_GPUH_PER_1B["slm"]) -> SpecialistPlan:
    """The method the paper's decision figure (Fig. 1) recommends, with its costs.

    Args:
        pretraining_budget: GPUh available before any domain is known (shared by all domains).
        specialization_budget: GPUh available once the domains' data arrives, for all ``num_domains`` together.
        num_domains: number of target domains to serve.
        domain_tokens: in-domain training tokens per domain (the paper: 1M, 8M or 64M).
        inference_budget: GPUh per 1B tokens the deployed model may cost (0.61: the 126M SLM; >= 2.54 allows the
            771M LLM).

    Returns:
        :class:`SpecialistPlan`: ``method`` in ``slm_pn`` / ``slm_is`` / ``llm`` (``slm_mix`` as alternative of PN),
        ``reason``, and ``costs`` with pretraining, per-domain and total specialization, ``C_total(N)`` and
        inference.
    """
    pretraining_budget = _check_budget("pretraining_budget", pretraining_budget)
    specialization_budget = _check_budget("specialization_budget", specialization_budget)
    if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(f"num_domains must be a positive integer, got {num_domains!r}")
    if isinstance(inference_budget, bool) or not isinstance(inference_budget, (int, float)) \
            or not inference_budget >= INFERENCE_GPUH_PER_1B["slm"]:
        raise ValueError(f"inference_budget={inference_budget!r} GPUh per 1B tokens is below the small model's "
                         f"{INFERENCE_GPUH_PER_1B['slm']}: no method of the paper fits")
    per_domain = specialization_budget / num_domains
    minimum = finetune_gpuh(domain_tokens)
    if per_domain < minimum:
        raise ValueError(
            f"specialization_budget={specialization_budget!r} GPUh gives {per_domain:.4g} GPUh per domain, less than "
            f"one fine-tune on {domain_tokens:.3g} tokens ({minimum:.3g} GPUh); the paper finds fine-tuning always "
            "necessary"
        )
    all_costs = {m: method_costs(m, pretraining_budget, per_domain, num_domains, domain_tokens) for m in METHODS}
    if inference_budget >= INFERENCE_GPUH_PER_1B["llm"] and per_domain >= finetune_gpuh(domain_tokens, large=True):
        method, alternatives = "llm", []
        reason = (f"inference budget {inference_budget:g} GPUh/1B >= the large model's "
                  f"{INFERENCE_GPUH_PER_1B['llm']}: train and fine-tune a large model")
    # per_domain >= IS_BREAK_EVEN * pretraining_budget, cross-multiplied so the paper's own point is exact
    elif per_domain * SHARED_PRETRAINING_CAP_GPUH >= IS_PRETRAINING_CAP_GPUH * pretraining_budget:
        method, alternatives = "slm_is", []
        reason = (f"specialization budget large: {per_domain:.4g} GPUh per domain >= {IS_BREAK_EVEN:g} x the "
                  f"{pretraining_budget:g} GPUh shared pretraining budget (few domains); pretrain one small model "
                  "per domain on importance-sampled generic data, then fine-tune")
    else:
        method, alternatives = "slm_pn", ["slm_mix"]
        reason = (f"specialization budget small: {per_domain:.4g} GPUh per domain < {IS_BREAK_EVEN:g} x the "
                  f"{pretraining_budget:g} GPUh shared pretraining (many domains); pretrain a projected network "
                  "(or hard mixture) once, pick the domain's expert, fine-tune it")
    return SpecialistPlan(method=method, reason=reason, alternatives=alternatives, costs=all_costs[method],
                          all_costs=all_costs)


def main(argv=None) -> dict:
    """CLI: ``hf-efficient-lm plan-specialists --pretraining-budget 650 --specialization-budget 130
    --num-domains 1`` prints the recommendation and the cost columns as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="hf-efficient-lm plan-specialists", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretraining-budget", type=float, required=True, help="GPUh, shared by all domains")
    parser.add_argument("--specialization-budget", type=float, required=True, help="GPUh, all domains together")
    parser.add_argument("--num-domains", type=int, required=True)
    parser.add_argument("--domain-tokens", type=float, default=1e6, help="in-domain training tokens per domain")
    parser.add_argument("--inference-budget", type=float, default=INFERENCE_GPUH_PER_1B["slm"],
                        help="GPUh per 1B tokens the deployed model may cost (2.54 allows the 771M LLM)")
    args = parser.parse_args(argv)
    try:
        result = plan(args.pretraining_budget, args.specialization_budget, args.num_domains,
                      domain_tokens=args.domain_tokens, inference_budget=args.inference_budget).to_dict()
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
