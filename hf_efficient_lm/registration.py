"""One place that wires our classes into Transformers' Auto classes.

Each family's ``__init__.py`` calls :func:`register_causal_lm` at import time, so ``import hf_efficient_lm``
is all a user needs for ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` to resolve our model types,
and a folder written by ``save_pretrained`` carries an ``auto_map`` plus the modeling files for
``trust_remote_code=True`` loading without the package installed.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

MODEL_TYPE_PREFIX = "hfelm_"

REGISTERED_MODEL_TYPES: dict[str, type[PreTrainedConfig]] = {}


def register_causal_lm(
    config_class: type[PreTrainedConfig],
    causal_lm_class: type[PreTrainedModel],
    base_model_class: type[PreTrainedModel] | None = None,
) -> None:
    """Register a config and its models with the Auto classes and for ``trust_remote_code`` export.

    Idempotent: re-importing a family (e.g. under pytest's module reloading) registers nothing twice.
    """
    model_type = config_class.model_type
    if not model_type.startswith(MODEL_TYPE_PREFIX):
        raise ValueError(
            f"model_type {model_type!r} of {config_class.__name__} must start with {MODEL_TYPE_PREFIX!r}: "
            "Transformers owns the unprefixed names (it already ships 'blt', for example)."
        )
    # The Trainer (label_smoothing_factor > 0) and the text-generation pipeline recognise a causal LM by its class name
    # in this table, not by the Auto registration below: without it the smoothed loss targets the current token
    # instead of the next one. The class's own base (compat_<family>.AutoClassesMixin) enters it when the class is
    # defined, so that a checkpoint loaded with trust_remote_code is known too.
    if causal_lm_class.__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        raise TypeError(f"{causal_lm_class.__name__} is not in Transformers' causal-LM name table, so the Trainer and "
                        "pipelines would not know it: derive it from AutoClassesMixin (compat_<family>.py)")
    if REGISTERED_MODEL_TYPES.get(model_type) is config_class:
        return
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, causal_lm_class, exist_ok=True)
    if base_model_class is not None:
        AutoModel.register(config_class, base_model_class, exist_ok=True)
        base_model_class.register_for_auto_class("AutoModel")
    config_class.register_for_auto_class()
    causal_lm_class.register_for_auto_class("AutoModelForCausalLM")
    REGISTERED_MODEL_TYPES[model_type] = config_class


def lazy_attributes(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) that imports ``exports[name]`` (a submodule of ``package``) on first use.

    Families register their model classes eagerly but re-export their tools (mining, training, clustering) through
    this, so ``import hf_efficient_lm`` pulls neither pandas, datasets, scikit-learn nor the ``Trainer``.
    """
    import importlib

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(importlib.import_module(package), name, value)  # later look-ups skip __getattr__
        return value

    return __getattr__
