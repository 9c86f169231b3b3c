"""Where the families meet the Transformers versions they support (linked as each family's ``compat_<family>.py``).

Transformers 5.24 renamed the cache argument and output field ``past_key_values`` (``cache_params``) to ``cache``:
model code uses the new name and goes through :data:`CACHE_NAME` / :func:`resolve_cache` / :func:`cache_of`, so
the same files run on every supported release. Importing this module checks the installed release.
"""

from __future__ import annotations

import inspect
from importlib import metadata

from packaging.version import Version
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.utils import logging

SUPPORTED_TRANSFORMERS = ("5.23", "5.26")  # tested: >= first, < second (the first untested minor)
CACHE_NAME = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
_OLD_CACHE_NAMES = ("past_key_values", "cache_params")


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
    """The cache passed as ``cache`` or under a pre-5.24 name in ``kwargs`` (popped); ValueError for two."""
    for name in _OLD_CACHE_NAMES:
        if name in kwargs:
            old = kwargs.pop(name)
            if cache is not None and old is not None and old is not cache:
                raise ValueError(f"pass the cache once: got both `cache` and `{name}`")
            cache = old if cache is None else cache
    return cache


def cache_of(output):
    """The cache field of a Transformers ``ModelOutput`` (``cache`` or ``past_key_values``)."""
    return output.get(CACHE_NAME)


check_transformers_version()
