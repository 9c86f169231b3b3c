"""The Python snippets of README.md, docs/ and the model card templates: every import resolves, and a name a snippet
uses without defining is the reader's own data (``tokenized_dataset``), never a library name it forgot to import."""

import ast
import builtins
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "model_cards").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
LIBRARIES = ("torch", "transformers", "hf_efficient_lm", "hf_efficient_lm.anchor", "hf_efficient_lm.scone",
             "hf_efficient_lm.blt", "hf_efficient_lm.specialists")


def snippets() -> list[tuple[str, str]]:
    """``(document:block number, code)`` for every python code block."""
    return [(f"{path.relative_to(ROOT)}:{number}", match.group(1)) for path in DOCUMENTS
            for number, match in enumerate(PYTHON_BLOCK.finditer(path.read_text(encoding="utf-8")))]


def problems_in(code: str) -> list[str]:
    """Imports that do not resolve and library names (modules, or attributes of torch / transformers / the package)
    used without an import."""
    tree = ast.parse(code)
    problems, defined = [], set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                defined.add((alias.asname or alias.name).split(".")[0])
                module = node.module if isinstance(node, ast.ImportFrom) else alias.name
                try:
                    imported = importlib.import_module(module)
                    if isinstance(node, ast.ImportFrom) and not hasattr(imported, alias.name):
                        importlib.import_module(f"{module}.{alias.name}")
                except ImportError as err:
                    problems.append(f"line {node.lineno}: {err}")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in defined:
            owners = [lib for lib in LIBRARIES if hasattr(importlib.import_module(lib), node.id)]
            if owners or importlib.util.find_spec(node.id) is not None:
                problems.append(f"line {node.lineno}: {node.id} is used without an import ({owners or 'a module'})")
    return sorted(set(problems))


SNIPPETS = snippets()


@pytest.mark.parametrize("where,code", SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_doc_snippets_import_what_they_use(where, code):
    assert not problems_in(code), problems_in(code)


def test_the_snippet_check_catches_a_missing_import_and_a_wrong_one():
    assert problems_in("import torch\nx = torch.ones(2)\n") == []
    assert problems_in("tok = AutoTokenizer.from_pretrained('x')\n")[0].startswith(
        "line 1: AutoTokenizer is used without an import (['transformers'")
    assert problems_in("y = json.dumps(1)\n") == ["line 1: json is used without an import (a module)"]
    assert "make_tiny_blt" in problems_in("from hf_efficient_lm.blt import make_tiny_blt\n")[0]
    assert problems_in("model = my_model\n") == []  # the reader's own data
