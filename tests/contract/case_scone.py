"""SconeLlama in the contract suite, in both modes.

* ``scone`` — training mode ("replace" fusion, the paper's): the f-gram model runs inside the forward pass.
* ``scone_table`` — inference mode ("gated" fusion with a non-zero gate): loaded from a folder written by
  ``export_fgram_table``; f-gram vectors come from the memory-mapped ``fgram_table.safetensors``.

Inputs are built from a handful of fixed token patterns, so most positions end a mined f-gram.
"""

from __future__ import annotations

import functools
import tempfile

import torch

from hf_efficient_lm.scone import SconeLlamaConfig, SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS
from tests.contract.common import ContractCase

VOCAB_SIZE = TINY_LLAMA_KWARGS["vocab_size"]
PATTERNS = [[5 + (7 * p + 3 * j) % (VOCAB_SIZE - 5) for j in range(2 + p % 4)] for p in range(12)]


def make_scone_input_ids(batch: int, length: int, generator: torch.Generator) -> torch.LongTensor:
    """Rows made of random fixed patterns (frequent n-grams) with a random filler token between some of them."""
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < length:
            row += PATTERNS[int(torch.randint(0, len(PATTERNS), (1,), generator=generator))]
            if float(torch.rand(1, generator=generator)) < 0.3:
                row.append(int(torch.randint(3, VOCAB_SIZE, (1,), generator=generator)))
        rows.append(row[:length])
    return torch.tensor(rows, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def scone_vocab():
    docs = make_scone_input_ids(64, 40, torch.Generator().manual_seed(123)).tolist()
    return mine_fgrams(docs, num_fgrams=120, max_len=4, min_count=3, barrier_ids=(0, 1, 2),
                       vocab_size=VOCAB_SIZE, show_progress=False)


def make_scone_model(attn_implementation: str = "sdpa", fusion: str = "replace") -> SconeLlamaForCausalLM:
    vocab = scone_vocab()
    torch.manual_seed(1)  # seed whose greedy continuations of the contract inputs do not hit EOS
    config = SconeLlamaConfig(**TINY_LLAMA_KWARGS, num_fgrams=vocab.num_fgrams, max_fgram_len=vocab.max_len,
                              fgram_num_layers=1, fgram_fusion=fusion)
    config._attn_implementation = attn_implementation
    model = SconeLlamaForCausalLM(config)
    if fusion == "gated":
        with torch.no_grad():
            model.model.fgram_gate.copy_(torch.linspace(0.5, 1.5, config.hidden_size))
    model.set_fgram_vocab(vocab)
    return model.eval()


@functools.lru_cache(maxsize=None)
def _exported_table_dir() -> str:
    folder = tempfile.mkdtemp(prefix="scone_contract_table_") + "/model"
    export_fgram_table(make_scone_model(fusion="gated"), folder, show_progress=False)
    return folder


def make_scone_table_model(attn_implementation: str = "sdpa") -> SconeLlamaForCausalLM:
    return SconeLlamaForCausalLM.from_pretrained(_exported_table_dir(), attn_implementation=attn_implementation).eval()


CASES = [
    ContractCase(
        name="scone",
        make_model=make_scone_model,
        make_input_ids=make_scone_input_ids,
        invalid_config=("max_fgram_len", 1, "max_fgram_len must be >= 2"),
        inputs_embeds_error="f-gram matching needs input_ids",
        continuous_batching_error="SconeLlama cannot decode over a PagedAttentionCache",
        # q_proj / v_proj also name the f-gram model's layers, whose rows are f-grams (tests/scone: kept out, it works)
        mixed_adapter_batch_error="PEFT's per-row adapters .*cannot reach the f-gram model",
        prefix_tuning_kwargs=lambda model, ids: dict(zip(("fgram_row", "fgram_len"), model.match_fgrams(ids))),
        prompt_tuning_error="SconeLlama needs input_ids: f-gram matching looks up token ids",
    ),
    ContractCase(
        name="scone_table",
        make_model=make_scone_table_model,
        make_input_ids=make_scone_input_ids,
        invalid_config=("fgram_mode", "disk", "fgram_mode must be one of"),
        inputs_embeds_error="f-gram matching needs input_ids",
        continuous_batching_error="SconeLlama cannot decode over a PagedAttentionCache",
        prefix_tuning_kwargs=lambda model, ids: dict(zip(("fgram_row", "fgram_len"), model.match_fgrams(ids))),
        prompt_tuning_error="SconeLlama needs input_ids: f-gram matching looks up token ids",
    ),
]
