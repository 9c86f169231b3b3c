"""Perplexity and bits-per-byte from summed negative log-likelihoods, as an `evaluate` metric.

`evaluate.load` of a Hub metric needs the network; this module loads from its local path:
``evaluate.load(hf_efficient_lm.eval.lm_bits_per_byte_path())``.
"""

import math

import datasets
import evaluate

_DESCRIPTION = """
Aggregates per-example summed negative log-likelihoods (natural log) with their token and UTF-8 byte counts into
corpus-level loss (nats per token), perplexity and bits-per-byte. Bits-per-byte compares models with different
tokenizers, including byte-level models.
"""

_KWARGS_DESCRIPTION = """
Args:
    nll_sum: summed NLL in nats of each example's predicted tokens.
    num_tokens: how many tokens each example predicted.
    num_bytes: how many UTF-8 bytes of text each example's predicted tokens cover.
Returns:
    loss, perplexity, bits_per_byte (corpus level).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LmBitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"nll_sum": datasets.Value("float64"), "num_tokens": datasets.Value("int64"),
                 "num_bytes": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll_sum, num_tokens, num_bytes):
        total_nll, tokens, nbytes = float(sum(nll_sum)), int(sum(num_tokens)), int(sum(num_bytes))
        if tokens <= 0 or nbytes <= 0:
            raise ValueError(f"need positive token and byte counts, got tokens={tokens}, bytes={nbytes}")
        loss = total_nll / tokens
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": total_nll / math.log(2) / nbytes}
