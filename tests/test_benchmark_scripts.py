"""Benchmark scripts: the fast ones run whole at tiny sizes, and options a script cannot honour are refused with one
line naming the option, before a model is built. (``tests/test_gpu_script.py`` runs the prepared accelerator script
end to end; ``test_layout.py`` checks that scripts plot and find their files through the package.)"""

import gzip
import importlib
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_decode_benchmark_refuses_fewer_steps_than_its_warm_up(monkeypatch, capsys):
    """``--steps`` counts the untimed warm-up steps too; ``--steps 3`` used to build both models, prefill every
    context and then stop on ``statistics.median`` of no data."""
    monkeypatch.syspath_prepend(str(BENCHMARKS / "anchor"))  # a script's own folder is on sys.path when it runs
    bench_decode_anchor = importlib.import_module("bench_decode_anchor")
    monkeypatch.setattr(bench_decode_anchor, "load_tokenizer", lambda: pytest.fail("built a model before refusing"))
    with pytest.raises(SystemExit) as stop:
        bench_decode_anchor.main(["--steps", "3"])
    assert stop.value.code == 2
    assert "--steps must be > 3 (the first 3 steps are untimed warm-up), got 3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the fast benchmarks, tiny
DOMAINS = ("pydocs", "kernel", "code", "dictionary", "fortunes")
# the sibling helper modules a script imports from its own folder: imported afresh under the fixture's paths
HELPERS = ("bench_common_anchor", "common_blt", "corpus_scone", "common_specialists")
SMOKE_RUNS = {  # script -> (tiny arguments, a line its report prints)
    "anchor/bench_decode_anchor.py": (["--size", "tiny", "--contexts", "32", "64", "--steps", "4", "--no-plot"],
                                      "Decode step time (size=tiny"),
    "anchor/bench_kv_anchor.py": (["--size", "tiny", "--long-tokens", "64", "--n-prompts", "1", "--chunk", "16",
                                   "--no-plot"], "saved"),
    "anchor/bench_prefix_reuse_anchor.py": (["--size", "tiny", "--queries", "2", "--query-tokens", "8", "--warmup",
                                             "0", "--prefix-repeats", "1"], "AnchorLlama compressed prefix reuse"),
    "anchor/bench_train_anchor.py": (["--size", "tiny", "--seq-len", "32", "--batch", "1", "--steps", "1"],
                                     "AnchorLlama AnSAN (sdpa)"),
    "blt/bench_generate_blt.py": (["--prompt-bytes", "48", "--new-bytes", "4", "--local-hidden", "32",
                                   "--latent-hidden", "64", "--latent-layers", "1"],
                                  "outputs identical to Transformers Blt: True"),
    "blt/bench_train_blt.py": (["--batch", "2", "--seq-len", "48", "--steps", "1", "--local-hidden", "32",
                                "--latent-hidden", "64", "--latent-layers", "1", "--padding-free"], "padding-free"),
    "scone/bench_table_scone.py": (["--rows", "5000", "--dim", "8", "--steps", "10", "--warmup", "1", "--vocab-size",
                                    "256", "--delete"], "match_last (per decode step) batch 16"),
    "specialists/bench_specialists_speed.py": (["--hidden", "32", "--layers", "1", "--vocab", "128", "--k", "2",
                                                "--basis", "2", "--batch", "2", "--length", "16", "--steps", "2"],
                                               "PN total"),
    "specialists/bench_embedders.py": (["--windows-per-domain", "4", "--window-chars", "200"], "| hashed n-grams |"),
}


def _synthetic_corpus(folder: Path) -> None:
    """Five domains of prose-like paragraphs (several sentences of 200-600 characters, as the anchor prompts need)."""
    words = "the a model cache reads every token and keeps its anchor while patches grow over bytes".split()
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for domain in DOMAINS:
        for split in ("train", "valid"):
            docs = ["\n\n".join(" ".join(f"{' '.join(rng.choices(words, k=rng.randint(6, 12))).capitalize()}."
                                         for _ in range(rng.randint(4, 6))) for _ in range(6)) for _ in range(40)]
            with gzip.open(folder / f"{domain}.{split}.jsonl.gz", "wt") as handle:
                handle.writelines(json.dumps({"text": f"{domain} {doc}"}) + "\n" for doc in docs)


@pytest.fixture(scope="module")
def benchmark_env(tmp_path_factory):
    """A synthetic corpus and an empty cache for the scripts (``$HFELM_CORPUS`` / ``$HFELM_CACHE``); a script's
    helper modules read them when imported, so they are dropped from ``sys.modules`` before and after."""
    root = tmp_path_factory.mktemp("benchmarks")
    _synthetic_corpus(root / "corpus")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HFELM_CORPUS", str(root / "corpus"))
        patch.setenv("HFELM_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        for name in HELPERS:
            sys.modules.pop(name, None)
        yield root
        for name in HELPERS:
            sys.modules.pop(name, None)
    torch.set_num_threads(threads)  # parse_benchmark_args sets --threads


@pytest.mark.parametrize("script", sorted(SMOKE_RUNS))
def test_fast_benchmarks_run_at_tiny_sizes(script, benchmark_env, monkeypatch, capsys):
    """Benchmarks import the package only, so a change to the package can break one unseen: each fast script runs
    whole on tiny sizes (its own files under the fixture's folder) and prints its report."""
    path = BENCHMARKS / script
    arguments, expected = SMOKE_RUNS[script]
    if script.endswith("bench_specialists_speed.py"):
        arguments = [*arguments, "--out", str(benchmark_env / "speed")]
    monkeypatch.syspath_prepend(str(path.parent))  # a script's own folder is on sys.path when it runs
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(arguments)
    assert expected in capsys.readouterr().out
