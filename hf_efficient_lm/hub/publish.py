"""Publishing a model folder with its card: save, write README.md from a template, ``HfApi.upload_folder``.

Transformers' ``push_to_hub`` would replace README.md with a generic card, so the upload goes through
``upload_folder`` on a staged copy. The ``HfApi`` is injectable (tests pass a fake one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .cards import CardInfo, render_model_card


@dataclass
class PublishResult:
    repo_id: str
    files: list[str]  # paths relative to the repo root, as uploaded
    commit: object  # what the api's upload_folder returned


def folder_facts(folder: Path) -> dict:
    """Card variables read off a saved folder: vocab size, parameter count, and pretraining metrics if recorded."""
    import json

    from safetensors import safe_open

    facts: dict = {}
    config = json.loads((folder / "config.json").read_text())
    facts["vocab_size"] = config.get("vocab_size")
    parameters = 0
    for weights in folder.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                parameters += count
    if parameters:
        facts["parameters"] = f"{parameters / 1e6:.2f} M"
    for metrics_file in ("pretrain_metrics.json", "base_metrics.json"):
        if (folder / metrics_file).exists():
            recorded = json.loads((folder / metrics_file).read_text())
            facts.setdefault("preset", recorded.get("preset"))
            if recorded.get("train_tokens"):
                facts["train_tokens"] = recorded["train_tokens"]
    return {k: v for k, v in facts.items() if v is not None}


def _stage(model_or_folder, tokenizer, staging: Path) -> None:
    if isinstance(model_or_folder, (str, os.PathLike)):
        source = Path(model_or_folder)
        if not (source / "config.json").exists():
            raise FileNotFoundError(f"{source} holds no saved model (config.json missing)")
        shutil.copytree(source, staging, dirs_exist_ok=True)
    else:
        model_or_folder.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    if list(staging.glob("*.bin")) or list(staging.glob("*.pt")):
        raise ValueError("refusing to publish pickle weights (*.bin / *.pt); save with safetensors")


def publish(
    model_or_folder,
    repo_id: str,
    *,
    card_template: str | Path,
    card_info: CardInfo | None = None,
    tokenizer=None,
    api=None,
    private: bool = False,
    commit_message: str = "Upload with hf-efficient-lm",
    staging_dir: str | Path | None = None,
) -> PublishResult:
    """Save the model (or take a saved folder), render its card and upload everything as one commit.

    ``staging_dir`` keeps the staged folder (a dry run with a fake api leaves it for inspection).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = card_info or CardInfo(model_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="hfelm-publish-") as tmp:
        staging = Path(staging_dir) if staging_dir is not None else Path(tmp) / "repo"
        staging.mkdir(parents=True, exist_ok=True)
        _stage(model_or_folder, tokenizer, staging)
        facts = folder_facts(staging)
        info = replace(info, extra={**facts, **info.extra})
        render_model_card(card_template, info).save(staging / "README.md")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        commit = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    return PublishResult(repo_id=repo_id, files=files, commit=commit)
