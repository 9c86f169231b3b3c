"""Publish a saved model folder with a model card rendered from model_cards/ (the template that fits the folder's
model_type unless --template names one).

    python examples/publish_model.py --model runs/base/final --repo-id me/base-5m --dry-run

Without --dry-run the folder is uploaded with huggingface_hub's HfApi (log in first with `hf auth login`).
The same as `hf-efficient-lm publish` (`--help` lists every option: --license, --dataset, --metric, --staging-dir, ...).
"""

import sys

from hf_efficient_lm.cli import main, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(["publish", *argv])))
