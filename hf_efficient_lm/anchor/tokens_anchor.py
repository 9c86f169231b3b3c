"""Anchor-token helpers: find endpoint ids in a tokenizer (EP mode) and add ``<AC>`` to a model + tokenizer (AC mode).

Not imported by the modeling files (tokenizers do not travel with ``trust_remote_code`` code).
"""

from __future__ import annotations

import torch

# The paper and the official script: the bare "." piece only. The broader set: sentence-final punctuation and
# newlines (until paper parity the default matched these four exactly; the training CLI matched ". ! ?" by suffix).
PAPER_ENDPOINTS = (".",)
BROAD_ENDPOINTS = (".", "!", "?", "\n")
DEFAULT_ENDPOINTS = PAPER_ENDPOINTS
DEFAULT_ANCHOR_TOKEN = "<AC>"
ENDPOINT_MATCHES = ("exact", "stripped", "suffix", "endswith")


def find_endpoint_token_ids(tokenizer, endpoints=None, match: str = "exact") -> list[int]:
    """Ids of the tokens that end a sentence, for ``anchor_mode="ep"``.

    The default reproduces the paper (AnLLM-EP): the one token whose text is exactly ``.``. The broader set —
    ``match="suffix"``, whose default endpoints are ``. ! ? \\n`` — also anchors BPE merges such as ``"end."`` and
    newline tokens, so fewer sentences stay open (more KV saved) on text that is not plain prose.

    Args:
        tokenizer: any Transformers tokenizer.
        endpoints: the sentence-ending strings; ``None`` = :data:`PAPER_ENDPOINTS` (``.``) for ``"exact"`` and
            ``"stripped"``, :data:`BROAD_ENDPOINTS` (``. ! ? \\n``) for ``"suffix"`` / ``"endswith"``.
        match: ``"exact"`` — tokens whose decoded text is exactly an endpoint (the paper: only the bare ``.`` piece);
            ``"stripped"`` — also tokens that decode to an endpoint plus surrounding whitespace (``" ."``, ``".\\n"``);
            ``"suffix"`` (alias ``"endswith"``) — any token whose text ends with an endpoint once trailing spaces are
            removed (BPE merges such as ``"end."``), so a merged sentence end still closes its sentence.

    Returns:
        Sorted token ids. Raises ``ValueError`` if none of the endpoints exists in the vocabulary.
    """
    if match not in ENDPOINT_MATCHES:
        raise ValueError(f"match must be one of {ENDPOINT_MATCHES}, got {match!r}")
    if endpoints is None:
        endpoints = BROAD_ENDPOINTS if match in ("suffix", "endswith") else PAPER_ENDPOINTS
    endpoints = tuple(endpoints)
    if not endpoints or any(not isinstance(e, str) or e == "" for e in endpoints):
        raise ValueError(f"endpoints must be non-empty strings, got {endpoints!r}")
    from ..data.tokenizer_training import surface_texts  # (here: hf_efficient_lm.data imports datasets)

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    found = set()
    for token_id, text in enumerate(surface_texts(tokenizer)):
        if token_id in special:
            continue
        if match == "exact":
            hit = text in endpoints
        elif match == "stripped":
            # " ." / ".\n" match "."; whitespace endpoints ("\n") match all-whitespace tokens containing them
            hit = text in endpoints or any(
                (e.strip() and text.strip() == e.strip()) or (not e.strip() and text and not text.strip() and e in text)
                for e in endpoints
            )
        else:
            trimmed = text.rstrip(" ")
            hit = any(trimmed.endswith(e) or (e.strip() and trimmed.rstrip().endswith(e.strip())) for e in endpoints)
        if hit:
            found.add(token_id)
    if not found:
        raise ValueError(f"the tokenizer has no token for any of the endpoints {endpoints!r} (match={match!r})")
    return sorted(found)


def add_anchor_token(model, tokenizer, token: str = DEFAULT_ANCHOR_TOKEN, init_from: str = ".") -> int:
    """Add the ``<AC>`` anchor token for ``anchor_mode="ac"``: tokenizer, embeddings, config.

    The new input-embedding row (and the LM-head row when untied) is copied from the token ``init_from`` (the
    official code copies ``.``), or set to the mean row with ``init_from="mean"`` (the paper's wording).
    Sets ``model.config.anchor_token_ids = [id]``, ``anchor_mode = "ac"``, ``anchor_token = token``.

    Returns:
        The id of ``token``.
    """
    existing = tokenizer.convert_tokens_to_ids(token)
    if existing is None or existing == tokenizer.unk_token_id:
        # special: never split or merged with neighbours, and removed by decode(skip_special_tokens=True)
        tokenizer.add_tokens([token], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if init_from != "mean":
        # the piece itself first: encode(".") gives SentencePiece's "▁." (a word-initial dot), not the "." piece
        piece_id = tokenizer.convert_tokens_to_ids(init_from)
        known = piece_id is not None and piece_id != tokenizer.unk_token_id
        source_ids = [piece_id] if known else tokenizer.encode(init_from, add_special_tokens=False)
        if len(source_ids) != 1:
            raise ValueError(f"init_from={init_from!r} is not a single token for this tokenizer (ids {source_ids})")
        source_id = source_ids[0]
    old_vocab = model.get_input_embeddings().weight.shape[0]
    if token_id >= old_vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not matrices[0]:
            matrices.append(output.weight)
        for weight in matrices:
            if init_from == "mean":
                weight[token_id] = weight[:old_vocab].mean(dim=0)
            else:
                weight[token_id] = weight[source_id]
    config = model.config
    config.anchor_token_ids = [token_id]
    config.anchor_mode = "ac"
    config.anchor_token = token
    config.validate_architecture()
    return token_id


def require_anchor_token(tokenizer, config) -> list[int]:
    """Check that ``tokenizer`` can produce the config's anchors; return the anchor ids.

    In ``"ac"`` mode the tokenizer must contain ``config.anchor_token`` (e.g. ``<AC>``) with the id in the config;
    raises ``ValueError`` naming the token otherwise.
    """
    ids = list(config.anchor_token_ids)
    if config.anchor_mode == "ac":
        token = config.anchor_token or DEFAULT_ANCHOR_TOKEN
        token_id = tokenizer.convert_tokens_to_ids(token)
        vocab = tokenizer.get_vocab()
        if token not in vocab:
            raise ValueError(
                f"anchor_mode='ac' but the tokenizer has no {token!r} token; call "
                "hf_efficient_lm.anchor.add_anchor_token(model, tokenizer) and save both."
            )
        if token_id not in ids:
            raise ValueError(
                f"the tokenizer's {token!r} has id {token_id} but the model's anchor_token_ids are {ids}: "
                "tokenizer and model do not belong together"
            )
    for token_id in ids:
        if token_id >= len(tokenizer):
            raise ValueError(f"anchor token id {token_id} is outside the tokenizer's vocabulary ({len(tokenizer)})")
    return ids


__all__ = [
    "PAPER_ENDPOINTS",
    "BROAD_ENDPOINTS",
    "ENDPOINT_MATCHES",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_ANCHOR_TOKEN",
    "find_endpoint_token_ids",
    "add_anchor_token",
    "require_anchor_token",
]
