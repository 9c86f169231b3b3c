"""Model cards and Hub publishing."""

from .cards import (
    DEFAULT_LICENSE,
    CardInfo,
    check_template_matches,
    find_card_template,
    model_cards_dir,
    render_model_card,
    template_for_model_type,
)
from .publish import PublishResult, publish

__all__ = ["DEFAULT_LICENSE", "CardInfo", "check_template_matches", "template_for_model_type", "PublishResult", "find_card_template", "model_cards_dir", "publish", "render_model_card"]
