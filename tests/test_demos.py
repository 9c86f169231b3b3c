"""The main demo (README command 1, ``hf-efficient-lm quickstart`` / ``examples/quickstart.py``) end to end at a tiny
size, and its refusals, which come before any pretraining starts."""

import json
import re

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from hf_efficient_lm.eval import evaluate_causal_lm
from hf_efficient_lm.tools.demos import stdlib_docstrings

from .helpers import assert_one_line_error, run_cli


def _figure(pattern: str, line: str) -> tuple[str, ...]:
    match = re.search(pattern, line)
    assert match, (pattern, line)
    return match.groups()


def test_quickstart_trains_a_base_and_prints_each_familys_headline(tmp_path):
    out = tmp_path / "out"
    result = run_cli("quickstart", "--output-dir", str(out), "--steps", "4", "--max-chars", "60000")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.split("== hf-efficient-lm quickstart ==")[1].splitlines()
    lines = {re.split(r" \(|:", line)[0].lstrip(" -"): line for line in summary if line.startswith(" - ")}
    assert list(lines) == ["base Llama", "AnchorLlama", "SconeLlama", "BLT", "Specialists"], summary

    # The base: the tokenizer and the 1m-preset Llama the demo saved, trained for the steps asked on the documents it
    # wrote, and its figures are those of the held-out documents (every 20th docstring document).
    documents = stdlib_docstrings(60000)
    train_docs = [json.loads(line)["text"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert train_docs == [d for i, d in enumerate(documents) if i % 20] and len(train_docs) >= 20
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    base = LlamaForCausalLM.from_pretrained(out / "base-run" / "final")
    base_params = sum(p.numel() for p in base.parameters())
    metrics = json.loads((out / "base-run" / "final" / "pretrain_metrics.json").read_text())
    assert (metrics["steps"], metrics["preset"], metrics["parameters"]) == (4, "1m", base_params)
    expected = evaluate_causal_lm(base, tokenizer, documents[::20], block_size=128, show_progress=False)
    perplexity, bits = map(float, _figure(r"held-out perplexity ([\d.]+), ([\d.]+) bits/byte", lines["base Llama"]))
    assert perplexity == pytest.approx(expected.perplexity, abs=0.06)
    assert bits == pytest.approx(expected.bits_per_byte, abs=6e-4)

    kept, seen = map(int, _figure(r"KV cache (\d+) of (\d+) tokens kept", lines["AnchorLlama"]))
    assert 0 < kept < seen  # the anchor cache drops the non-anchor tokens of every finished sentence

    scone_params, llama_params = (int(n.replace(",", "")) for n in _figure(
        r"accelerator params ([\d,]+) \(Llama ([\d,]+) \+ gate\)", lines["SconeLlama"]))
    assert llama_params == base_params and scone_params == base_params + base.config.hidden_size
    assert "f-grams cover" in lines["SconeLlama"]

    # BLT: the cached generation equals the full recompute, and the patch figures agree with each other.
    assert "(identical output)" in lines["BLT"], lines["BLT"]
    num_bytes, prompt, patches, per_patch = _figure(
        r"(\d+) bytes \((\d+) prompt \+ 64 generated\) in (\d+) patches \(([\d.]+) bytes/patch\)", lines["BLT"])
    assert int(num_bytes) == int(prompt) + 64 and 1 < int(patches) < int(num_bytes)
    assert float(per_patch) == pytest.approx(int(num_bytes) / int(patches), abs=0.05)

    # Specialists: the mixture of 2 base-sized experts becomes one stock Llama the size of the base.
    mixture, specialist = _figure(r"mixture \((\d+)k params\) -> stock LlamaForCausalLM of (\d+)k params",
                                  lines["Specialists"])
    assert int(specialist) == round(base_params / 1e3) and int(mixture) == round(2 * base_params / 1e3)


@pytest.mark.parametrize("argv, needles", [
    (["--families", "anchr"], ["--families", "invalid choice: 'anchr'"]),
    (["--steps", "0"], ["--steps", "0"]),
    (["--max-chars", "1000"], ["--max-chars 1000", "needs at least 21"]),
])
def test_quickstart_refuses_bad_options_before_pretraining(tmp_path, argv, needles):
    out = tmp_path / "out"
    result = run_cli("quickstart", "--output-dir", str(out), *argv)
    assert_one_line_error(result, *needles)
    assert not (out / "base-run").exists()  # nothing was trained: a typo costs seconds, not the pretraining
