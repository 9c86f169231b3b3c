"""Where the families meet Transformers: the versions they support, the Auto tables (linked as compat_<family>.py).
Transformers 5.24 renamed the cache argument and output field ``past_key_values`` (``cache_params``) to ``cache``:
model code uses the new name and goes through :data:`CACHE_NAME` / :func:`resolve_cache` / :func:`cache_of`, so
the same files run on every supported release. Importing this module checks the installed release."""

from __future__ import annotations

import inspect
from importlib import metadata

from packaging.version import Version
from transformers import GenerationMixin, LlamaModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging

SUPPORTED_TRANSFORMERS = ("5.23", "5.26")  # tested: >= first, < second (the first untested minor)
CACHE_NAME = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def check_transformers_version(version: str | None = None) -> None:
    version = version or metadata.version("transformers")
    low, high = SUPPORTED_TRANSFORMERS
    supported = f"hf-efficient-lm supports transformers>={low},<{high}"
    minor = Version(version).release[:2]  # (5.26.0.dev0 is 5.26)
    if minor < Version(low).release:
        raise ImportError(f"transformers {version} is installed; {supported}. Run: pip install 'transformers>={low},<{high}'")
    if minor >= Version(high).release:
        logging.get_logger("hf_efficient_lm").warning_once(f"transformers {version} is installed; {supported} (newer "
                                                           "releases are untested and may rename APIs).")


def resolve_cache(cache, kwargs: dict):
    """The cache passed as ``cache`` or under a pre-5.24 name in ``kwargs`` (popped). Given both, ``cache`` wins as in
    Transformers' deprecate_kwarg, unless it is empty: generate() on 5.24+ passes its own beside PEFT<0.22's prefix."""
    for other in [kwargs.pop(name) for name in ("past_key_values", "cache_params") if name in kwargs]:
        if cache is None or (other is not None and not getattr(cache, "get_seq_length", lambda: 1)()):
            cache = other
    return cache


class AutoClassesMixin:
    """Base of a family's models: keeps Transformers' Auto tables right with or without the package (trust_remote_code).
    Saving a head model also maps ``AutoModel`` to its base model (Transformers maps only the saved class)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The Trainer (label smoothing) and pipelines know causal LMs by the names in this table: a class goes under its
        # model_type, or beside it when another class holds that key (a user's subclass, a renamed remote-code copy)
        if issubclass(cls, GenerationMixin) and cls.config_class is not None:
            model_type, name = cls.config_class.model_type, cls.__name__
            taken = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, name) != name
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[f"{model_type}:{name}" if taken else model_type] = name

    def save_pretrained(self, save_directory, *args, **kwargs):
        base = type(self.base_model)
        if base is not type(self) and getattr(base, "_auto_class", None) and base.__module__ == type(self).__module__:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    base._auto_class: f"{base.__module__.rsplit('.', 1)[-1]}.{base.__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)


def cache_of(output):
    """The cache field of a Transformers ``ModelOutput`` (``cache`` or ``past_key_values``)."""
    return output.get(CACHE_NAME)


check_transformers_version()
