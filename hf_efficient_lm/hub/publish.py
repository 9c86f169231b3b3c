"""Publishing a model folder with its card: save, write README.md from a template, ``HfApi.upload_folder``.

Transformers' ``push_to_hub`` would replace README.md with a generic card, so the upload goes through
``upload_folder`` on a staged copy. The ``HfApi`` is injectable (tests pass a fake one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..io_utils import atomic_dir, check_writable
from .cards import CardInfo, check_template_matches, render_model_card


@dataclass
class PublishResult:
    repo_id: str
    files: list[str]  # paths relative to the repo root, as uploaded
    commit: object  # what the api's upload_folder returned
    card: str = ""  # the rendered README.md


METRICS_FILES = ("pretrain_metrics.json", "base_metrics.json", "anchor_train_metrics.json", "train_scone_metrics.json",
                 "train_blt_metrics.json", "eval_scone.json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def _count_parameters(files, prefix: str = "") -> int:
    from safetensors import safe_open

    total = 0
    for weights in files:
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():
                if not name.startswith(prefix):
                    continue
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def folder_facts(folder: Path, source: Path | None = None) -> dict:
    """Everything a card can say from a saved folder: its config (per family), its weights, and the family's metrics
    file (in the folder or, for ``train_scone.py``'s ``table/``, its parent). Keys: template variables, plus
    ``_datasets``, ``_base_model`` and ``_metrics`` for the card metadata."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    facts: dict = {"model_type": model_type, "vocab_size": config.get("vocab_size"),
                   "num_layers": config.get("num_hidden_layers")}
    main_weights = [p for p in folder.glob("*.safetensors") if p.name not in ("fgram_table.safetensors",
                                                                            "fgram_index.safetensors")]
    parameters = _count_parameters(main_weights)
    if parameters:
        facts["parameters"] = _millions(parameters)
    metrics: list[tuple[str, str, float]] = []
    recorded: dict = {}
    source = Path(source) if source is not None else folder
    for name in METRICS_FILES:
        for where in (folder, source, source.parent):
            if (where / name).is_file():
                data = _read_json(where / name)
                if name == "eval_scone.json":
                    for dataset, row in data.items():
                        for key, value in row.items():
                            metrics.append((dataset, key.replace("_ppl", " perplexity"), float(value)))
                else:
                    recorded.update(data)
                break
    facts["preset"] = recorded.get("preset")
    facts["train_tokens"] = recorded.get("train_tokens")
    facts["training_steps"] = recorded.get("steps")
    facts["learning_rate"] = recorded.get("learning_rate")
    facts["seed"] = recorded.get("seed")
    facts["_datasets"] = list(recorded.get("data_files") or ([recorded["dataset_name"]] if recorded.get("dataset_name")
                                                             else []))
    base = recorded.get("base_model")
    facts["_base_model"] = Path(base).name if base and Path(base).exists() else base
    for key, label in (("eval_perplexity", "perplexity"), ("eval_perplexity_ansan", "perplexity"),
                       ("eval_loss", "loss")):
        if key in recorded:
            metrics.append(("held-out", label, float(recorded[key])))
    for domain, value in (recorded.get("bits_per_byte") or {}).items():
        metrics.append((domain, "bits_per_byte", float(value)))
    for domain, row in (recorded.get("held_out") or {}).items():  # benchmarks/make_base.py's per-domain results
        metrics += [(domain, key, float(row[key])) for key in ("perplexity", "bits_per_byte") if key in row]
    facts["_metrics"] = metrics

    if model_type == "hfelm_anchor_llama":
        facts.update(anchor_mode=config.get("anchor_mode"), anchor_token_ids=config.get("anchor_token_ids"),
                     anchor_token=config.get("anchor_token"), anchor_mask_variant=config.get("anchor_mask_variant"))
    elif model_type == "hfelm_scone_llama":
        facts.update(num_fgrams=config.get("num_fgrams"), max_fgram_len=config.get("max_fgram_len"),
                     fgram_layers=config.get("fgram_num_layers"), fusion=config.get("fgram_fusion"),
                     fgram_mode=config.get("fgram_mode"))
        # what the accelerator runs once the table is exported: the main model (A_f's weights stay in a
        # training-mode folder until then, and were counted as accelerator parameters)
        fgram_params = _count_parameters(main_weights, "model.fgram_model.")
        facts["accelerator_params"] = _millions(parameters - fgram_params) if parameters else None
        facts["fgram_model_params"] = _millions(fgram_params) if fgram_params else None
        table = folder / "fgram_table.safetensors"
        if table.is_file():
            from safetensors import safe_open

            with safe_open(str(table), framework="pt") as handle:
                name = next(iter(handle.keys()))
                rows = handle.get_slice(name)
                facts["table_dtype"] = str(rows.get_dtype()).lower().replace("bf16", "bfloat16").replace(
                    "f32", "float32").replace("f16", "float16")
            facts["table_size"] = f"{table.stat().st_size / 2**20:.1f} MiB"
        elif config.get("fgram_mode") != "table":
            facts["table_size"] = "not exported (training-mode folder: run `hf-efficient-lm scone-export`)"
            facts["table_dtype"] = "n/a"
    elif model_type == "hfelm_blt":
        facts.update(patching_mode=config.get("patching_mode"), patching_threshold=config.get("patching_threshold"),
                     mean_patch_size=recorded.get("mean_patch_size"))
        facts["num_layers"] = (config.get("global_config") or {}).get("num_hidden_layers")
        for key, prefix in (("latent_parameters", "model.global_transformer."),
                            ("entropy_parameters", "model.entropy_model."),
                            ("hash_parameters", "model.encoder_hash_tok_embedding.")):
            facts[key] = _millions(_count_parameters(main_weights, prefix))
        if recorded.get("train_bytes"):
            facts["train_bytes"] = f"{recorded['train_bytes'] / 1e6:.1f} M"
        if recorded.get("flops_per_byte"):
            facts["flops_per_byte"] = f"{recorded['flops_per_byte'] / 1e6:.2f} M"
    elif model_type in ("hfelm_specialist_mixture", "hfelm_hyper_specialist"):
        index = folder / "cluster_index.json"
        facts["embedder"] = (json.dumps(_read_json(index).get("embedder"), sort_keys=True) if index.is_file() else
                             "not in this folder: publish the ClusterIndex saved with the model next to it")
        if model_type == "hfelm_specialist_mixture":
            experts = int(config.get("num_clusters") or config.get("num_experts") or 1)  # old configs: num_experts
            facts.update(num_clusters=experts, total_params=facts.get("parameters"),
                         expert_params=_millions(parameters // experts) if parameters else None)
        else:
            # deployed: a stock Llama, i.e. the shared weights plus one materialised MLP per layer
            shared = parameters - _count_parameters(main_weights, "model.cluster_codes") - sum(
                _count_parameters(main_weights, f"model.layers.{i}.mlp.")
                for i in range(int(config.get("num_hidden_layers") or 0)))
            mlp = 3 * int(config.get("hidden_size") or 0) * int(config.get("intermediate_size") or 0)
            facts.update(num_clusters=config.get("num_clusters"), num_basis=config.get("num_basis"),
                         total_params=facts.get("parameters"),
                         inference_params=_millions(shared + mlp * int(config.get("num_hidden_layers") or 0)))
    facts["training_procedure"] = training_procedure(recorded, facts.get("_datasets", []))
    return {k: v for k, v in facts.items() if v is not None}


def training_procedure(recorded: dict, datasets: list[str]) -> str:
    """The card's "Training procedure" as markdown bullets, from the training run's metrics file (``recorded``).
    Says plainly what the folder does not record instead of printing an empty value."""
    if not recorded:
        return ("- This folder records no training run (no metrics file of an hf-efficient-lm training command); "
                "ask the publisher how it was trained.")
    lines = []
    if recorded.get("base_model"):
        lines.append(f"- Initialised from `{Path(str(recorded['base_model'])).name}`.")
    data = ", ".join(f"`{Path(str(d)).name}`" for d in datasets) or "not recorded"
    tokens = recorded.get("train_tokens") or recorded.get("train_bytes")
    unit = "tokens" if recorded.get("train_tokens") else "bytes"
    lines.append(f"- Data: {data}" + (f"; {int(tokens):,} training {unit}." if tokens else "."))
    schedule = [f"{label} {recorded[key]}" for key, label in (("preset", "preset"), ("steps", "optimizer steps"),
                                                               ("learning_rate", "peak learning rate"),
                                                               ("seed", "seed")) if recorded.get(key) is not None]
    if schedule:
        lines.append("- Schedule: " + ", ".join(schedule) + " (AdamW through the Transformers `Trainer`).")
    return "\n".join(lines)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _stage(model_or_folder, tokenizer, staging: Path) -> None:
    if isinstance(model_or_folder, (str, os.PathLike)):
        source = Path(model_or_folder)
        if not (source / "config.json").exists():
            raise FileNotFoundError(f"{source} holds no saved model (config.json missing)")
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoint-*", ".*", "run_fingerprint.json"))
    else:
        model_or_folder.save_pretrained(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    pickles = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:  # anywhere in the folder: a trainer/ subfolder's training_args.bin unpickles on download too
        raise ValueError(f"refusing to publish pickle files ({', '.join(pickles[:5])}); weights only as safetensors, "
                         "and leave pickled trainer state out of the folder")


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
    if staging_dir is not None:
        staging_dir = Path(staging_dir)
        if staging_dir.exists() and (not staging_dir.is_dir() or any(staging_dir.iterdir())):
            raise FileExistsError(f"staging dir {staging_dir} is not empty: its files would be uploaded with this "
                                  "model; pass an empty or new folder")
        check_writable(staging_dir, replace=True)
    with tempfile.TemporaryDirectory(prefix="hfelm-publish-") as tmp:
        staging = Path(tmp) / "repo"
        staging.mkdir()
        _stage(model_or_folder, tokenizer, staging)
        source = Path(model_or_folder) if isinstance(model_or_folder, (str, os.PathLike)) else None
        facts = folder_facts(staging, source=source)
        check_template_matches(card_template, facts.get("model_type"))
        extra = {k: v for k, v in facts.items() if not k.startswith("_")}
        info = replace(
            info,
            base_model=info.base_model or facts.get("_base_model"),
            datasets=info.datasets or facts.get("_datasets", []),
            metrics=info.metrics or facts.get("_metrics", []),
            extra={**extra, **info.extra},
        )
        card = render_model_card(card_template, info)
        card.save(staging / "README.md")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        if staging_dir is not None:  # appears whole, only once the card is written
            with atomic_dir(staging_dir) as kept:
                shutil.copytree(staging, kept, dirs_exist_ok=True)
        api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        commit = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    return PublishResult(repo_id=repo_id, files=files, commit=commit, card=str(card))
