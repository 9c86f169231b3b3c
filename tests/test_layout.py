"""Static checks of what a saved checkpoint can carry: model files import only stdlib, torch, transformers and
single-dot siblings; file names are unique across the package (a saved folder is flat)."""

import ast
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_efficient_lm"
FAMILIES = ("anchor", "scone", "blt", "specialists")
# safetensors and packaging are hard dependencies of transformers, so wherever a checkpoint's code can run, they are
# installed
ALLOWED_TOP_LEVEL = {"torch", "transformers", "safetensors", "packaging"} | set(sys.stdlib_module_names)


def _model_files() -> list[Path]:
    return sorted(
        p for family in FAMILIES if (PACKAGE / family).is_dir()
        for p in (PACKAGE / family).glob("*.py") if p.name.startswith(("configuration_", "modeling_"))
    )


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.level, node.module or ""


def _closure(path: Path) -> set[Path]:
    """The model file plus every sibling it pulls in through single-dot imports (those are copied too)."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for _, level, module in _imports(current):
            if level == 1 and module:
                todo.append(current.parent / f"{module}.py")
    return seen


def carried_files(family: str) -> set[Path]:
    """What a saved checkpoint of ``family`` carries: its configuration_*/modeling_* files and, transitively, the
    single-dot siblings they import (``save_pretrained`` copies exactly these for ``trust_remote_code``)."""
    return set().union(*(_closure(p) for p in _model_files() if p.parent.name == family))


def test_model_files_import_only_what_a_checkpoint_carries():
    problems = []
    for model_file in _model_files():
        for path in _closure(model_file):
            if not path.exists():
                problems.append(f"{model_file.name} imports missing sibling {path.name}")
                continue
            for lineno, level, module in _imports(path):
                where = f"{path.relative_to(PACKAGE)}:{lineno}"
                if level > 1:
                    problems.append(f"{where}: `from {'.' * level}{module}` leaves the family folder")
                elif level == 1 and "." in module:
                    problems.append(f"{where}: `from .{module}` reaches into a subpackage")
                elif level == 1 and not module:
                    problems.append(f"{where}: `from . import ...` is not copied by save_pretrained")
                elif level == 0 and module.split(".")[0] not in ALLOWED_TOP_LEVEL:
                    problems.append(f"{where}: imports {module!r} (only stdlib, torch, transformers, safetensors, packaging allowed)")
    assert not problems, "\n".join(problems)


# Lines of Python (``wc -l``) a saved checkpoint carries per family (issue 12: conversion, export, mining, building,
# data and training tools and reference implementations live in hf_efficient_lm/tools/ and never count). Issue 12's
# targets: BLT 1,200 and anchor 700 (met); SCONE 900 (not met: its forward/generate path, hash-index matcher, scalar
# decode matcher, table reader and decode-step fusion exceed it, see DEVELOPERS.md); specialists has no target (722:
# 715 + routing's cache_argument, continuous batching before Transformers 5.24, the mixture's `embeddings` path that
# PEFT prompt tuning embeds with, the attention-mask shape check and the per-row adapter refusal, less the projected
# network's per-call routing state, now passed as arguments, and three keyword-per-line calls written on fewer lines).
# The limits are today's figures, so the carried code cannot grow back.
CARRIED_LINE_LIMITS = {"blt": 1200, "anchor": 700, "scone": 1296, "specialists": 722}


def carried_lines(family: str) -> tuple[int, list[str]]:
    """``wc -l`` of :func:`carried_files` and their names."""
    files = carried_files(family)
    return sum(len(p.read_text().splitlines()) for p in files), sorted(p.name for p in files)


@pytest.mark.parametrize("family", sorted(CARRIED_LINE_LIMITS))
def test_checkpoints_carry_at_most_their_line_budget(family):
    lines, files = carried_lines(family)
    assert files and all(p.parent.name == family for p in carried_files(family)), files
    assert lines <= CARRIED_LINE_LIMITS[family], f"{family} carries {lines} lines: {files}"


def test_carried_lines_follow_the_import_graph(tmp_path, monkeypatch):
    family = tmp_path / "hf_efficient_lm" / "blt"
    family.mkdir(parents=True)
    (family / "modeling_x.py").write_text("from .cache_x import C\n\n\n")
    (family / "cache_x.py").write_text("import torch\n")
    (family / "tool_x.py").write_text("from .modeling_x import M\n" * 50)  # imports the model, is not imported by it
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "hf_efficient_lm")
    assert carried_lines("blt") == (4, ["cache_x.py", "modeling_x.py"])


def test_python_file_names_are_unique_across_the_package():
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    duplicates = sorted(name for name, count in names.items() if count > 1)
    assert not duplicates, f"file names used twice (a saved checkpoint folder is flat): {duplicates}"


def test_scan_catches_a_forbidden_import(tmp_path, monkeypatch):
    family = tmp_path / "hf_efficient_lm" / "anchor"
    family.mkdir(parents=True)
    (family / "modeling_bad.py").write_text("from ..common import x\nimport numpy\nfrom .ok import y\n")
    (family / "ok.py").write_text("import hf_efficient_lm\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "hf_efficient_lm")
    with pytest.raises(AssertionError) as failure:
        test_model_files_import_only_what_a_checkpoint_carries()
    message = str(failure.value)
    assert "leaves the family folder" in message and "'numpy'" in message and "'hf_efficient_lm'" in message


def test_package_import_is_light_and_tools_load_on_first_use():
    """`import hf_efficient_lm` (all Auto registration needs) pulls no data/training stack; tools load lazily."""
    import subprocess
    import sys

    code = (
        "import sys, hf_efficient_lm\n"
        "heavy = [m for m in ('pandas', 'datasets', 'sklearn', 'transformers.trainer', 'transformers.trainer_utils')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from hf_efficient_lm import mine_fgrams, specialize, ClusterIndex\n"
        "from hf_efficient_lm.specialists import DistillationTrainer, train_mixture_experts\n"
        "assert mine_fgrams.__module__.endswith('scone_mining') and 'pandas' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_blt_reexports_every_public_data_and_flops_name():
    """docs/blt.md promises ``from hf_efficient_lm.blt import X`` for every public name of the data and FLOPs tools."""
    import hf_efficient_lm.blt as blt
    from hf_efficient_lm.tools import blt_data, blt_flops

    for module in (blt_data, blt_flops):
        missing = [name for name in module.__all__ if name not in blt.__all__]
        assert not missing, f"{module.__name__} names missing from hf_efficient_lm.blt: {missing}"
        assert all(getattr(blt, name) is getattr(module, name) for name in module.__all__)


def test_scripts_import_the_package_without_editing_sys_path():
    """Benchmarks and examples run as scripts (their folder is on ``sys.path`` already) and import the package; a
    ``sys.path.insert`` or ``runpy`` call means one script reaches into another's tree (issue 12)."""
    root = PACKAGE.parent
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("benchmarks", "examples")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "sys.path.insert" in line or "sys.path.append" in line or re.search(r"\brunpy\b", line)
    ]
    assert not offenders, offenders


def test_benchmarks_build_their_parser_with_benchmark_parser():
    """Every benchmark takes ``--threads`` from ``eval.benchmarking.benchmark_parser`` (DEVELOPERS.md); the GPU script,
    which runs the test suite and the CUDA benchmarks as parts, is the one parser of its own."""
    root = PACKAGE.parent / "benchmarks"
    offenders = [
        str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
        if "argparse.ArgumentParser(" in path.read_text() and path != root / "gpu" / "run_all.py"
    ]
    assert not offenders, offenders


def test_scripts_plot_and_find_their_files_through_the_package():
    """One implementation of each shared job: a benchmark or example plots with ``eval.benchmarking.new_figure`` /
    ``write_figure`` (the Agg backend, an atomic write, the extra named when matplotlib is missing) and finds the
    corpus and the cache with ``data.corpus_dir`` / ``cache_dir`` (``$HFELM_CORPUS`` / ``$HFELM_CACHE``). A script
    that spelt ``~/.cache/...`` ignored ``$HFELM_CACHE``; one that called ``savefig`` left half-written plots."""
    root = PACKAGE.parent
    offenders = []
    for folder in ("benchmarks", "examples"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                called = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else ""
                if any(name.split(".")[0] == "matplotlib" for name in names) or called in ("expanduser", "home",
                                                                                             "savefig", "subplots"):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders


def test_benchmarks_import_helpers_never_another_script():
    """A benchmark imports the package and its folder's helper modules (bench_common_anchor.py, corpus_scone.py, ...);
    importing another benchmark *script* (a file with a ``__main__`` block) couples two experiments (issue 12)."""
    root = PACKAGE.parent / "benchmarks"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for _, level, module in _imports(path):
            sibling = path.parent / f"{module}.py"
            if level == 0 and sibling.is_file() and "__name__ == \"__main__\"" in sibling.read_text():
                offenders.append(f"{path.relative_to(root)} imports the script {sibling.name}")
    assert not offenders, offenders


def test_causal_lms_enter_the_trainers_table_and_registration_checks_it():
    """Every class on AutoClassesMixin names itself in the table by which the Trainer (label smoothing) and pipelines
    know causal LMs, when it is defined (so with trust_remote_code too): under its model_type, or beside it when another
    class holds the key (a user's subclass, a renamed copy loaded first), so both are known. Registration refuses a
    class missing from the table, before it registers anything."""
    from transformers import AutoConfig, GenerationMixin, LlamaConfig, LlamaForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as names

    from hf_efficient_lm import AnchorLlamaForCausalLM
    from hf_efficient_lm.compat import AutoClassesMixin
    from hf_efficient_lm.registration import register_causal_lm

    class PlainConfig(LlamaConfig):
        model_type = "hfelm_plain_test"

    class PlainForCausalLM(LlamaForCausalLM):
        config_class = PlainConfig

    with pytest.raises(TypeError, match="PlainForCausalLM is not in Transformers' causal-LM name table.*AutoClassesMixin"):
        register_causal_lm(PlainConfig, PlainForCausalLM)
    with pytest.raises(ValueError, match="Unrecognized model|hfelm_plain_test"):
        AutoConfig.for_model("hfelm_plain_test")  # nothing was registered
    try:
        class CopyForCausalLM(AutoClassesMixin, LlamaForCausalLM):  # e.g. a renamed remote-code copy, loaded first
            config_class = PlainConfig

        class MixedForCausalLM(AutoClassesMixin, LlamaForCausalLM):
            config_class = PlainConfig

        class MyAnchorForCausalLM(AnchorLlamaForCausalLM):  # a user's subclass of a family class
            pass

        class NoConfig(AutoClassesMixin, GenerationMixin):  # (no config_class: nothing to key it by)
            config_class = None

        assert names["hfelm_plain_test"] == "CopyForCausalLM"
        assert names["hfelm_plain_test:MixedForCausalLM"] == "MixedForCausalLM"
        assert names["hfelm_anchor_llama"] == "AnchorLlamaForCausalLM"
        assert names["hfelm_anchor_llama:MyAnchorForCausalLM"] == "MyAnchorForCausalLM"
        assert "NoConfig" not in names.values()
    finally:
        for key in ("hfelm_plain_test", "hfelm_plain_test:MixedForCausalLM", "hfelm_anchor_llama:MyAnchorForCausalLM"):
            names.pop(key, None)
