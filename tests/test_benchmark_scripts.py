"""Benchmark scripts refuse options they cannot honour with one line naming the option, before building a model
(``tests/test_gpu_script.py`` runs the prepared accelerator script end to end; ``test_layout.py`` checks that scripts
plot and find their files through the package)."""

import importlib
from pathlib import Path

import pytest

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
