"""Publish a saved model folder with a model card rendered from model_cards/.

    python examples/publish_model.py --model runs/base/final --repo-id me/base-5m --dry-run

Without --dry-run the folder is uploaded with huggingface_hub's HfApi (log in first with `hf auth login`).
The same is available as `hf-efficient-lm publish`.
"""

import argparse
import json

from hf_efficient_lm.hub import CardInfo, publish


class PrintingApi:
    """A stand-in for HfApi that uploads nothing."""

    def create_repo(self, repo_id, **kwargs):
        print(f"would create {repo_id}")

    def upload_folder(self, folder_path, repo_id, **kwargs):
        print(f"would upload {folder_path} to {repo_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder written by save_pretrained")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--template", default="llama_base", help="template name in model_cards/ or a .md path")
    parser.add_argument("--metrics", help="a JSON file of {dataset: perplexity} to put in the card")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--staging-dir", help="keep the staged folder (with README.md) here")
    args = parser.parse_args()
    metrics = []
    if args.metrics:
        metrics = [(dataset, "perplexity", value) for dataset, value in json.load(open(args.metrics)).items()]
    result = publish(args.model, args.repo_id, card_template=args.template,
                     card_info=CardInfo(model_id=args.repo_id, metrics=metrics),
                     api=PrintingApi() if args.dry_run else None, staging_dir=args.staging_dir)
    print("\n".join(result.files))


if __name__ == "__main__":
    main()
