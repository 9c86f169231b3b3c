"""Model cards rendered from the templates in ``model_cards/`` with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

MIN_TRANSFORMERS = "5.23"


def model_cards_dir() -> Path:
    """The card templates: ``hf_efficient_lm/model_cards/`` in an installed wheel (setup.py copies them there), else
    the checkout's top-level ``model_cards/`` (their source; editable installs and running from the tree)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "model_cards"
    return packaged if packaged.is_dir() else package.parent / "model_cards"


# Which saved model types each template describes (a card for another model would state wrong facts).
TEMPLATE_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llama_base": ("llama",),
    "anchor": ("hfelm_anchor_llama",),
    "scone": ("hfelm_scone_llama",),
    "blt": ("hfelm_blt",),
    "specialist_mixture": ("hfelm_specialist_mixture",),
    "specialist_hyper": ("hfelm_hyper_specialist",),
    "specialist_specialized": ("llama",),
}
DEFAULT_LICENSE = "other"  # the licence depends on the training data: say so rather than claim apache-2.0


def template_for_model_type(model_type: str) -> str:
    """The default template for a saved folder's ``model_type``."""
    for name, types in TEMPLATE_MODEL_TYPES.items():
        if model_type in types:
            return name
    raise ValueError(f"no model card template for model_type {model_type!r}; pass --template with a .md path")


def check_template_matches(template: str | Path, model_type: str | None) -> None:
    """Raise ``ValueError`` when a named template describes another kind of model than ``model_type``."""
    name = Path(template).stem if str(template).endswith(".md") else str(template)
    allowed = TEMPLATE_MODEL_TYPES.get(name)
    if model_type is None or allowed is None:
        return  # a custom .md template: the user vouches for it
    if model_type not in allowed:
        raise ValueError(f"card template {name!r} describes {' / '.join(allowed)} models but this folder holds a "
                         f"{model_type!r} model; use --template {template_for_model_type(model_type)}")


def find_card_template(name_or_path: str | Path) -> Path:
    """A template by name (``"anchor"`` -> ``model_cards/anchor.md``) or by path; clear error if it is missing."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".md" and candidate.exists():
        return candidate
    named = model_cards_dir() / f"{name_or_path}.md"
    if named.exists():
        return named
    available = sorted(p.stem for p in model_cards_dir().glob("*.md")) if model_cards_dir().is_dir() else []
    raise FileNotFoundError(f"no model card template {str(name_or_path)!r}; available: {available} (or pass a .md path)")


@dataclass
class CardInfo:
    """What a card says about a model. ``metrics``: (dataset name, metric type, value) triples."""

    model_id: str
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    metrics: list[tuple[str, str, float]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    license: str | None = DEFAULT_LICENSE
    extra: dict = field(default_factory=dict)  # template variables of a family's own template


def render_model_card(template: str | Path, info: CardInfo) -> ModelCard:
    """Fill ``template`` with ``info``; the YAML metadata carries base model, datasets and eval results."""
    eval_results = [
        EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=dataset, metric_type=metric,
                   metric_value=float(value))
        for dataset, metric, value in info.metrics
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=info.license,
        base_model=info.base_model,
        datasets=info.datasets or None,
        tags=["hf-efficient-lm", *info.tags],
        model_name=info.model_id,
        eval_results=eval_results or None,
    )
    metrics_table = [{"dataset": d, "metric": m, "value": f"{v:.4g}"} for d, m, v in info.metrics]
    variables = dict(
        model_id=info.model_id,
        base_model=info.base_model,
        datasets_text=", ".join(info.datasets) or None,
        license_text=info.license if info.license not in (None, "other") else
        "not stated (set it with --license to what the training data allows)",
        metrics_table=metrics_table,
        min_transformers=MIN_TRANSFORMERS,
        **info.extra,
    )
    # None means "unknown": leave the variable undefined so the template's own wording applies, never print "None"
    variables = {k: v for k, v in variables.items() if v is not None}
    return ModelCard.from_template(card_data, template_path=str(find_card_template(template)), **variables)
