"""Loading any `datasets` text dataset: local json/jsonl(.gz)/text/csv/parquet files or a Hub dataset name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

_BUILDER_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".parquet": "parquet",
}


def _builder_for(path: str) -> str:
    suffixes = [s for s in Path(path).suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    for suffix in reversed(suffixes):
        if suffix in _BUILDER_BY_SUFFIX:
            return _BUILDER_BY_SUFFIX[suffix]
    raise ValueError(
        f"cannot tell the format of {path!r}: expected one of {sorted(_BUILDER_BY_SUFFIX)} (optionally .gz)"
    )


def load_text_dataset(
    data_files: str | Sequence[str] | None = None,
    *,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
) -> Dataset:
    """Load one split of a text dataset and check that it has ``text_column``.

    Either ``data_files`` (local files, all of one format) or ``dataset_name`` (a Hub dataset; needs the network).
    """
    if (data_files is None) == (dataset_name is None):
        raise ValueError("pass exactly one of data_files (local files) or dataset_name (a Hub dataset)")
    if data_files is not None:
        files = [data_files] if isinstance(data_files, (str, Path)) else [str(f) for f in data_files]
        if not files:
            raise ValueError("data_files is empty")
        missing = [f for f in files if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"data files not found: {missing}")
        builders = {_builder_for(str(f)) for f in files}
        if len(builders) != 1:
            raise ValueError(f"data_files mix formats {sorted(builders)}; load them separately")
        dataset = load_dataset(builders.pop(), data_files={split: [str(f) for f in files]}, split=split)
    else:
        dataset = load_dataset(dataset_name, dataset_config, split=split)
    if isinstance(dataset, DatasetDict):  # pragma: no cover - split= always gives a Dataset
        dataset = dataset[split]
    require_text_column(dataset, text_column)
    return dataset


def require_text_column(dataset: Dataset, text_column: str) -> None:
    """Raise a clear error when ``text_column`` is missing or does not hold strings."""
    columns = list(dataset.column_names or [])
    if text_column not in columns:
        raise ValueError(
            f"dataset has no text column {text_column!r} (its columns: {columns}); pass the right --text_column"
        )
    feature = dataset.features[text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"column {text_column!r} holds {feature}, not text")


def iter_texts(dataset: Iterable[dict], text_column: str = "text", batch_size: int = 1000) -> Iterator[list[str]]:
    """Yield lists of non-empty texts, ``batch_size`` at a time (tokenizer trainers take such an iterator)."""
    if isinstance(dataset, Dataset):
        for start in range(0, len(dataset), batch_size):
            texts = [t for t in dataset[start : start + batch_size][text_column] if t]
            if texts:
                yield texts
        return
    batch: list[str] = []
    for row in dataset:
        if row[text_column]:
            batch.append(row[text_column])
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_texts(files: list[str], limit_chars: int | None = None, text_column: str = "text") -> list[str]:
    """The documents of ``files`` in order, as a list of str, stopping once ``limit_chars`` characters are read."""
    texts, total = [], 0
    for path in files:
        dataset = load_text_dataset([path], text_column=text_column)
        for text in dataset[text_column]:
            texts.append(text)
            total += len(text)
            if limit_chars and total >= limit_chars:
                return texts
    return texts
