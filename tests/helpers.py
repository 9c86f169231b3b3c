"""Small shared test data: documents written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "model", "token", "cache", "anchor", "byte", "patch", "expert", "cluster"]


def make_documents(n: int = 60, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text: sentences of a small vocabulary with punctuation and newlines."""
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences) + "\n")
    return docs


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.writelines(json.dumps({column: text}) + "\n" for text in texts)
    return path
