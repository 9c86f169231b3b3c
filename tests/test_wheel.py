"""Issue #12 item 6: the wheel carries the card templates, so `publish` works after `pip install hf-efficient-lm`
without the checkout (hub/cards.py used to read model_cards/ relative to the source tree)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("dist")
    # a clean copy: a stale build/ in the checkout would hide a wheel that lost its templates
    source = tmp_path_factory.mktemp("src") / "hf-efficient-lm"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", ".ci-venv*",
                                                                 "__pycache__", ".pytest_cache", "*.whl"))
    # no build isolation: the test must not reach the index; the venv's setuptools builds it
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "-w", str(out), "-q"], capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("hf_efficient_lm-*.whl")
    return built


def test_wheel_carries_every_card_template(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    sources = sorted(p.name for p in (ROOT / "model_cards").glob("*.md"))
    assert sources and all(f"hf_efficient_lm/model_cards/{name}" in names for name in sources), names


def test_installed_wheel_publishes_a_dry_run_without_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                             str(target), str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "elsewhere"  # not the checkout: nothing resolves relative to the source tree
    work.mkdir()
    script = (
        "import sys, hf_efficient_lm\n"
        f"assert hf_efficient_lm.__file__.startswith({str(target)!r}), hf_efficient_lm.__file__\n"
        "from hf_efficient_lm.testing_utils import make_tiny_llama\n"
        "make_tiny_llama().save_pretrained('model')\n"
        "from hf_efficient_lm.cli import console_main\n"
        "sys.argv = ['hf-efficient-lm', 'publish', '--model', 'model', '--repo-id', 'me/tiny', '--dry-run']\n"
        "console_main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[dry run] README.md (llama_base template)" in run.stderr and "## Intended use" in run.stderr
