"""Loading any `datasets` text dataset: local json/jsonl(.gz)/text/csv/parquet files or a Hub dataset name."""

from __future__ import annotations

import contextlib
import json
import os
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


def local_path(name: str | os.PathLike, what: str = "model folder") -> str:
    """``name`` unchanged if it exists or may be a Hub id (``owner/name``); a missing path that can only be local
    (``./x``, ``/x``, ``~/x``, ``a/b/c``) raises ``FileNotFoundError`` naming it, instead of the Hub client's
    "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    if text.startswith((".", "/", "~")) or "\\" in text or len(parts) > 2 or text.endswith("/"):
        raise FileNotFoundError(f"{what} {text!r} does not exist")
    return text


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
    A ``.txt`` file goes through ``datasets``' text loader: one document per line, its newline dropped, a blank line
    an empty document (packing gives it an EOS of its own). Multi-line documents belong in JSON lines.
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
        not_files = [f for f in files if not Path(f).is_file()]
        if not_files:
            raise IsADirectoryError(f"data files must be files, not folders: {not_files}")
        builders = {_builder_for(str(f)) for f in files}
        if len(builders) != 1:
            raise ValueError(f"data_files mix formats {sorted(builders)}; load them separately")
        builder = builders.pop()
        empty = [f for f in files if Path(f).stat().st_size == 0]
        if empty:
            raise ValueError(f"data file {empty[0]} is empty")
        if builder in ("json", "text", "csv"):
            for f in files:  # datasets may accept bad UTF-8 and fail much later, far from the file's name
                _check_utf8(f)
        try:
            with _quiet_datasets_errors():  # its "Failed to load JSON" log line would precede our one-line message
                dataset = load_dataset(builder, data_files={split: [str(f) for f in files]}, split=split)
        except Exception as error:  # datasets wraps parse errors in DatasetGenerationError without the file's name
            for f in files:
                problem = _diagnose_file(f, builder)
                if problem:
                    raise ValueError(problem) from error
            raise ValueError(f"could not load data files {files}: {_root_cause(error)}") from error
        source = f"data files {files}"
    else:
        dataset = load_dataset(dataset_name, dataset_config, split=split)
        source = f"dataset {dataset_name!r}"
    if isinstance(dataset, DatasetDict):  # pragma: no cover - split= always gives a Dataset
        dataset = dataset[split]
    require_text_column(dataset, text_column)
    if len(dataset) == 0:
        raise ValueError(f"{source} hold no documents")
    return dataset


def _open_text(path: str):
    """Binary handle on a possibly compressed file."""
    import bz2
    import gzip
    import lzma

    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    return openers.get(Path(path).suffix, open)(path, "rb")


@contextlib.contextmanager
def _quiet_datasets_errors():
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(max(level, datasets.logging.CRITICAL))
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def _check_utf8(path: str, chunk_size: int = 1 << 22) -> None:
    """Raise ``ValueError`` naming ``path`` and the line if it is not UTF-8 (streamed: constant memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with _open_text(path) as handle:
        while True:
            block = handle.read(chunk_size)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                position = max(0, error.start - len(error.object) + len(block))
                lines += block[:position].count(b"\n")
                raise ValueError(f"data file {path} is not UTF-8 text (line {lines}, byte {offset + position}: "
                                 f"{error.reason}); convert it, e.g. with iconv -t utf-8") from None
            if not block:
                return
            offset += len(block)
            lines += block.count(b"\n")


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"


def _diagnose_file(path: str, builder: str) -> str | None:
    """A one-line reason why ``path`` cannot be read as ``builder`` text (bad UTF-8, bad JSON), or None."""
    import json

    if builder not in ("json", "text", "csv"):
        return None
    try:
        with _open_text(path) as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        return f"cannot read data file {path}: {error}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        return f"data file {path} is not UTF-8 text (byte {error.start}, line {line}: {error.reason})"
    if not text.strip():
        return f"data file {path} is empty"
    if builder != "json":
        return None
    try:
        json.loads(text)
        return None  # one JSON document (e.g. a list of records)
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"data file {path} has malformed JSON on line {number}: {error.msg} (column {error.colno})"
        if not isinstance(record, dict):
            return f"data file {path} line {number} is a JSON {type(record).__name__}, not an object with a text field"
    return None


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


def read_texts(files: str | os.PathLike | Sequence[str | os.PathLike], limit_chars: int | None = None,
               text_column: str = "text", *, limit_docs: int | None = None, per_file: bool = False) -> list[str]:
    """The documents of ``files`` in order, as a list of str, stopping once ``limit_chars`` characters or
    ``limit_docs`` documents are read (the one reader of the package, its examples and benchmarks). With
    ``per_file=True`` the limits are split evenly over the files (a budget over several domains, not spent on the
    first file: the corpus's code file alone holds 11M characters).

    JSON-lines files (``.jsonl``, optionally compressed) are streamed line by line, so a limit stops the read early;
    other formats go through :func:`load_text_dataset`.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if (limit_chars is not None and limit_chars <= 0) or (limit_docs is not None and limit_docs < 0):
        raise ValueError(f"limit_chars must be positive and limit_docs >= 0 (None: no limit), got {limit_chars}, "
                         f"{limit_docs}")
    if per_file and len(files) > 1:
        # file i gets limit // n, the first limit % n one more: the shares sum to the limit (a rounded-up share
        # read up to n - 1 documents too many)
        def share(limit, i):
            return None if limit is None else limit // len(files) + (i < limit % len(files))

        shares = [(share(limit_chars, i), share(limit_docs, i)) for i in range(len(files))]
        return [text for path, (chars, docs) in zip(files, shares) if chars != 0 and docs != 0
                for text in read_texts([path], chars, text_column, limit_docs=docs)]
    texts, total = [], 0
    if limit_docs == 0:
        return texts

    def full() -> bool:
        return bool(limit_chars and total >= limit_chars) or (limit_docs is not None and len(texts) >= limit_docs)

    for path in map(str, files):
        if Path(path).suffix == ".jsonl" or Path(path).suffixes[-2:-1] == [".jsonl"]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"data file {path!r} does not exist")
            with _open_text(path) as handle:
                documents = (json.loads(line)[text_column] for line in handle if line.strip())
                for text in documents:
                    texts.append(text)
                    total += len(text)
                    if full():
                        return texts
            continue
        for text in load_text_dataset([path], text_column=text_column)[text_column]:
            texts.append(text)
            total += len(text)
            if full():
                return texts
    return texts


CORPUS_DOMAINS = ("pydocs", "kernel", "code", "dictionary", "fortunes")  # the project corpus's five domains


def corpus_dir() -> Path:
    """The project corpus (``$HFELM_CORPUS``, default ``../shared/corpus`` beside the checkout)."""
    return Path(os.environ.get("HFELM_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus"))


def cache_dir(*parts: str) -> Path:
    """``$HFELM_CACHE`` (default ``~/.cache/hf_efficient_lm``) joined with ``parts``: base models, tokenized data."""
    return Path(os.environ.get("HFELM_CACHE", Path.home() / ".cache" / "hf_efficient_lm")).joinpath(*parts)


def corpus_texts(domain: str, split: str = "train", limit: int | None = None, *,
                 limit_chars: int | None = None, corpus: str | os.PathLike | None = None) -> list[str]:
    """The documents of ``<corpus>/<domain>.<split>.jsonl.gz`` (at most ``limit`` / ``limit_chars``); ``corpus``
    defaults to :func:`corpus_dir`."""
    path = Path(corpus if corpus is not None else corpus_dir()) / f"{domain}.{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} not found; set HFELM_CORPUS to the corpus folder")
    return read_texts([path], limit_chars, limit_docs=limit)
