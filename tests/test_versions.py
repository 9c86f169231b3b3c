"""The supported Transformers range: one line outside it (package import and remote-code checkpoints), the
declared range equals the tested one, and every family folder speaks both cache names."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import DynamicCache

from hf_efficient_lm.anchor import compat_anchor
from hf_efficient_lm.blt import compat_blt
from hf_efficient_lm.scone import compat_scone
from hf_efficient_lm.specialists import compat_specialists

ROOT = Path(__file__).resolve().parents[1]
COMPAT_MODULES = [compat_anchor, compat_blt, compat_scone, compat_specialists]


def _run(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_every_family_declares_the_same_range_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("transformers"))
    low, high = re.fullmatch(r"transformers>=([\d.]+),<([\d.]+)", spec).groups()
    for module in COMPAT_MODULES:
        assert module.SUPPORTED_TRANSFORMERS == (low, high), module.__name__
    minimum = (ROOT / ".ci" / "constraints-min.txt").read_text()
    assert f"transformers=={low}.0" in minimum


def test_every_declared_lower_bound_is_pinned_for_the_minimum_end_of_ci():
    """.ci/run builds its minimum end from .ci/constraints-min.txt: each ``>=`` bound of pyproject.toml must be pinned
    there at that release (same major.minor, or the exact patch when the bound names one), so CI proves the floor."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pinned = {}
    for line in (ROOT / ".ci" / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pinned[name.strip().lower().replace("_", "-")] = Version(version)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unpinned = []
    for dep in map(Requirement, deps):
        for spec in dep.specifier:
            if spec.operator != ">=":
                continue
            name, bound = dep.name.lower().replace("_", "-"), Version(spec.version)
            have = pinned.get(name)
            if have is None or have.release[: len(bound.release)] != bound.release or have not in dep.specifier:
                unpinned.append(f"{dep} (constraints-min pins {have})")
    assert not unpinned, unpinned


def test_installed_transformers_is_inside_the_range():
    for module in COMPAT_MODULES:
        module.check_transformers_version(transformers.__version__)  # no error, no warning needed


@pytest.mark.parametrize("module", COMPAT_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_cache_name_matches_the_installed_llama(module):
    import inspect

    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    assert module.CACHE_NAME in inspect.signature(LlamaForCausalLM.forward).parameters


def test_resolve_cache_takes_either_name_and_prefers_cache_unless_empty():
    cache, other = object(), object()
    for name in ("past_key_values", "cache_params"):
        kwargs = {name: cache, "x": 1}
        assert compat_anchor.resolve_cache(None, kwargs) is cache and kwargs == {"x": 1}
    assert compat_anchor.resolve_cache(cache, {}) is cache
    assert compat_anchor.resolve_cache(cache, {"past_key_values": other}) is cache  # as Transformers' deprecate_kwarg
    assert compat_anchor.resolve_cache(cache, {"past_key_values": None}) is cache
    filled = DynamicCache()
    filled.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), 0)
    # generate() on 5.24+ passes its own empty cache beside the prefix that PEFT before 0.22 puts in past_key_values
    assert compat_anchor.resolve_cache(DynamicCache(), {"past_key_values": filled}) is filled
    assert compat_anchor.resolve_cache(filled, {"past_key_values": DynamicCache()}) is filled


def test_a_deprecated_call_from_the_package_fails_its_test(no_deprecated_transformers_calls):
    """Renames are caught while the old name still works (5.24 renamed ``past_key_values`` to ``cache``): a deprecation
    notice Transformers logs from a call in the package fails the test (conftest's autouse fixture), as does a
    deprecation warning attributed to a package module (pyproject's filters); the same notice from a test's own call
    (so also from Transformers' own code that a test runs) does not."""
    found = no_deprecated_transformers_calls.found
    logger = transformers.utils.logging.get_logger("transformers.utils.generic")
    logger.warning_once("`past_key_values` is deprecated. Use `cache` instead.")  # the test's own call
    assert found == []
    notice = "`cache_params` is deprecated. Use `cache` instead."
    package_file = str(Path(compat_anchor.__file__).resolve())
    exec(compile("logger.warning_once(notice)", package_file, "exec"), {"logger": logger, "notice": notice})
    assert len(found) == 1 and found[0].startswith(f"{package_file}:1: ") and found[0].endswith(notice), found
    found.clear()  # (this test made it on purpose)
    for category in (DeprecationWarning, FutureWarning):
        with pytest.raises(category, match="old"):
            exec(compile("warnings.warn('old', category, stacklevel=1)", package_file, "exec"),
                 {"__name__": compat_anchor.__name__, "warnings": warnings, "category": category})


def test_older_transformers_fails_at_package_import_with_one_line():
    result = _run(
        """
        import importlib.metadata as metadata
        real = metadata.version
        metadata.version = lambda name: "5.22.2" if name == "transformers" else real(name)
        import hf_efficient_lm
        """
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: transformers 5.22.2 is installed; hf-efficient-lm supports transformers>=")


def test_newer_transformers_warns_once():
    result = _run(
        """
        import importlib.metadata as metadata
        real = metadata.version
        metadata.version = lambda name: "5.99.0" if name == "transformers" else real(name)
        import hf_efficient_lm
        print("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout
    assert result.stderr.count("transformers 5.99.0 is installed; hf-efficient-lm supports") == 1


def test_remote_code_checkpoint_refuses_an_older_transformers(tmp_path):
    from tests.contract.case_anchor import make_anchor_model

    make_anchor_model().save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "compat_anchor.py").exists(), "the checkpoint must carry its compat module"
    assert not (tmp_path / "model" / "compat_anchor.py").is_symlink(), "a checkpoint carries the file, not a link"
    result = _run(
        f"""
        import sys
        sys.modules["hf_efficient_lm"] = None  # a user without the package
        import importlib.metadata as metadata
        real = metadata.version
        metadata.version = lambda name: "5.20.0" if name == "transformers" else real(name)
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        """,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "transformers 5.20.0 is installed; hf-efficient-lm supports transformers>=" in result.stderr
    assert "TypeError" not in result.stderr


def test_the_four_compat_modules_are_one_file_copied():
    """A checkpoint can only import its own folder's siblings, so each family carries a copy: one file, linked."""
    texts = {Path(module.__file__).read_text() for module in COMPAT_MODULES}
    assert len(texts) == 1, "edit hf_efficient_lm/compat.py (each compat_<family>.py links to it)"
    shared = (Path(compat_anchor.__file__).parents[1] / "compat.py").resolve()
    assert {Path(module.__file__).resolve() for module in COMPAT_MODULES} == {shared}
