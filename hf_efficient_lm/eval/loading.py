"""Loading a model folder for evaluation without silent substitutes: every weight must come from the checkpoint, and
a tokenizer passed separately must be the one saved with the model."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_causal_lm_strict(path: str, *, trust_remote_code: bool = False, dtype=None):
    """``AutoModelForCausalLM.from_pretrained`` that raises ``ValueError`` when weights are missing from the folder,
    have the wrong shape, or are saved but unused: the first two would be randomly initialised (e.g. ``model_type``
    edited to another architecture), the last means the config describes another model than the weights (e.g. fewer
    layers), and any figure computed then is meaningless."""
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing or mismatched or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} weights of {type(model).__name__} are not in the checkpoint "
                            f"(e.g. {', '.join(missing[:3])})")
        if mismatched:
            names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
            problems.append(f"{len(mismatched)} weights have another shape (e.g. {', '.join(names[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} saved weights are not used by {type(model).__name__} "
                            f"(e.g. {', '.join(unexpected[:3])})")
        raise ValueError(
            f"{path}: {'; '.join(problems)}; the evaluation would not measure the saved model. Do config.json's "
            f"model_type ({model.config.model_type!r}) and sizes match the saved weights?"
        )
    return model


def folder_has_tokenizer(folder: str | Path) -> bool:
    return Path(folder).is_dir() and any((Path(folder) / name).exists() for name in TOKENIZER_FILES)


def check_tokenizer_matches_folder(tokenizer, model_folder: str | Path, *, trust_remote_code: bool = False) -> None:
    """Raise ``ValueError`` if ``model_folder`` carries a tokenizer that splits text differently from ``tokenizer``
    (compared by :func:`hf_efficient_lm.data.tokenizer_digest`: same vocabulary size is not enough)."""
    from transformers import AutoTokenizer

    from ..data import tokenizer_digest

    if not folder_has_tokenizer(model_folder):
        return
    saved = AutoTokenizer.from_pretrained(str(model_folder), trust_remote_code=trust_remote_code)
    expected, given = tokenizer_digest(saved), tokenizer_digest(tokenizer)
    if expected != given:
        raise ValueError(
            f"the tokenizer differs from the one saved with the model in {model_folder} (digest {given[:19]}... vs "
            f"{expected[:19]}...): its ids would mean other tokens to the model. Drop --tokenizer to use the model's own"
        )
