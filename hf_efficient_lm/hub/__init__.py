"""Model cards and Hub publishing."""

from .cards import CardInfo, find_card_template, model_cards_dir, render_model_card
from .publish import PublishResult, publish

__all__ = ["CardInfo", "PublishResult", "find_card_template", "model_cards_dir", "publish", "render_model_card"]
