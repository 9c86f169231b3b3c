"""Issue #16 item 5: the prepared accelerator run keeps working on a CPU (smoke sizes, one measuring round): every
family's row is measured and written, with positive throughputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_smoke_on_cpu_writes_every_row(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_all.py"), "--device", "cpu",
                             "--skip-tests", "--smoke", "--out", str(tmp_path)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "run_all.json").read_text())["rows"]
    methods = {row["method"].split(" ")[0] for row in rows}
    assert {"AnchorLlama", "SconeLlama", "BLTForCausalLM", "SpecialistMixture", "HyperSpecialist"} <= methods
    assert all(row["method_value"] > 0 and row["baseline_value"] > 0 for row in rows)
    assert "| decode @ 256 tokens | AnchorLlama |" in (tmp_path / "run_all.md").read_text()


def test_run_all_parts_measures_only_the_named_rows(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "run_all.py"), "--device", "cpu",
                             "--skip-tests", "--smoke", "--parts", "blt", "--out", str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run_all.json").read_text())
    assert [row["method"] for row in report["rows"]] == ["BLTForCausalLM (cached)"]
    assert report["failures"] == {} and report["versions"].startswith("torch ")
    # the row is printed as soon as it is measured, before the final table
    assert result.stdout.count("| generate bytes/s | BLTForCausalLM (cached) |") == 2
