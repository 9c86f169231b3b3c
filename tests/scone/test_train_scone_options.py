"""``hf-efficient-lm train-scone``'s options reach what it builds: the f-gram model, the mined vocabulary, the
exported table, the held-out figures and the from-scratch main model. Each option is set away from its default in a
setting where the default would give something else (asserted), so a dropped option fails here."""

import json

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

from hf_efficient_lm.data import pack_dataset
from hf_efficient_lm.eval import evaluate_causal_lm
from hf_efficient_lm.scone import FgramVocab, SconeLlamaForCausalLM
from hf_efficient_lm.tools.scone_mining import mine_fgrams
from hf_efficient_lm.tools.scone_training import main as train_scone
from hf_efficient_lm.train.presets import LLAMA_PRESETS
from tests.helpers import make_documents, save_tiny_base, write_jsonl

DOCS = make_documents(60)
VALID = make_documents(6, seed=9)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scone_options")
    save_tiny_base(root / "llama", DOCS)
    write_jsonl(root / "train.jsonl", DOCS)
    write_jsonl(root / "valid.jsonl", VALID)
    return root


def _argv(root, out, *extra):
    return ["--data_files", str(root / "train.jsonl"), "--block_size", "32", "--table_dtype", "float32",
            "--output_dir", str(root / out), "--per_device_train_batch_size", "4", "--max_steps", "1",
            "--save_steps", "10", "--learning_rate", "1e-2", "--seed", "0", "--use_cpu", "true",
            "--disable_tqdm", "true", "--report_to", "none", *extra]


def _fgrams(vocab: FgramVocab) -> set[tuple[int, ...]]:
    tokens, lengths = vocab.fgram_tokens(torch.arange(vocab.num_fgrams))
    return {tuple(row[:n].tolist()) for row, n in zip(tokens, lengths)}


def test_train_scone_mines_builds_exports_and_evaluates_as_told(root):
    tok = AutoTokenizer.from_pretrained(root / "llama")
    argv = _argv(root, "run", "--base_model", str(root / "llama"), "--max_documents", "30", "--num_fgrams", "300",
                 "--max_fgram_len", "3", "--min_count", "3", "--fgram_num_layers", "1", "--fgram_hidden_size", "24",
                 "--fgram_fusion", "replace", "--fgram_dir", str(root / "fgrams"), "--validation_files",
                 str(root / "valid.jsonl"), "--eval_block_size", "16")
    out = train_scone(argv)

    # the f-gram model
    config = AutoConfig.from_pretrained(out / "final", trust_remote_code=True)
    assert (config.fgram_num_layers, config.fgram_hidden_size, config.fgram_fusion) == (1, 24, "replace")

    # the vocabulary: mined from the first 30 documents' blocks with S, K, the count threshold and the barriers
    # (BOS/EOS/pad) given, and saved to --fgram_dir
    barriers = sorted({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} - {None})

    def mined(documents=30, **options):
        blocks = pack_dataset(Dataset.from_dict({"text": DOCS[:documents]}), tok, 32)
        settings = dict(num_fgrams=300, max_len=3, min_count=3, barrier_ids=barriers) | options
        return _fgrams(mine_fgrams(blocks, tokenizer=tok, show_progress=False, **settings))

    saved = FgramVocab.load(root / "fgrams", tokenizer=tok)
    assert saved.num_fgrams == 300 and saved.max_len == 3 and list(saved.barrier_ids) == barriers
    expected = mined()
    assert _fgrams(saved) == expected
    assert FgramVocab.load(out / "final", tokenizer=tok).metadata() == saved.metadata()
    for other in (mined(documents=60), mined(num_fgrams=100_000), mined(max_len=5), mined(min_count=5),
                  mined(barrier_ids=[])):  # what each default would have mined
        assert other != expected

    # the table: float32 rows (the default is bfloat16), one per f-gram
    with safe_open(str(out / "table" / "fgram_table.safetensors"), "pt") as table:
        name = next(iter(table.keys()))
        row = table.get_slice(name)
        assert row.get_dtype() == "F32" and row.get_shape()[0] == 300

    # the held-out figures: the table model and the base, each scored in windows of --eval_block_size tokens
    figures = json.loads((out / "eval_scone.json").read_text())["valid.jsonl"]
    scone = SconeLlamaForCausalLM.from_pretrained(out / "table").eval()
    base = LlamaForCausalLM.from_pretrained(root / "llama").eval()
    for key, model in (("scone_ppl", scone), ("base_ppl", base)):
        assert figures[key] == pytest.approx(evaluate_causal_lm(model, tok, VALID, block_size=16).perplexity)
        assert figures[key] != pytest.approx(evaluate_causal_lm(model, tok, VALID, block_size=256).perplexity)

    # the same run again without --validation_files leaves no earlier evaluation behind (it would go on the card)
    train_scone(argv[: argv.index("--validation_files")] + argv[argv.index("--validation_files") + 2:])
    assert not (out / "eval_scone.json").exists() and (out / "table").is_dir()

    # a later run given the same --fgram_dir uses that vocabulary instead of mining its own (S = 10 here)
    again = train_scone(_argv(root, "reuse", "--base_model", str(root / "llama"), "--num_fgrams", "10",
                              "--fgram_dir", str(root / "fgrams")))
    assert json.loads((again / "train_scone_metrics.json").read_text())["num_fgrams"] == 300


def test_train_scone_from_scratch_builds_the_preset(root):
    """--from_scratch_preset (the scaling study: a fresh main model of a Llama preset plus the f-gram model) with the
    base's tokenizer; the same seed gives the same model, so a rerun elsewhere trains the same weights."""
    preset = LLAMA_PRESETS["200k"]
    tok = AutoTokenizer.from_pretrained(root / "llama")
    finals = []
    for out in ("scratch", "scratch_again"):
        run = train_scone(_argv(root, out, "--from_scratch_preset", "200k", "--tokenizer", str(root / "llama"),
                                "--num_fgrams", "50", "--max_fgram_len", "3", "--min_count", "2"))
        finals.append(run / "final")
    config = AutoConfig.from_pretrained(finals[0], trust_remote_code=True)
    assert {key: getattr(config, key) for key in preset} == preset and config.vocab_size == len(tok)
    assert config.num_fgrams == 50
    metrics = json.loads((finals[0].parent / "train_scone_metrics.json").read_text())
    assert metrics["from_scratch_preset"] == "200k" and metrics["base_model"] is None
    first, second = (SconeLlamaForCausalLM.from_pretrained(f).state_dict() for f in finals)
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(ValueError, match="needs --tokenizer"):
        train_scone(_argv(root, "unused", "--from_scratch_preset", "200k"))
    with pytest.raises(ValueError, match="exactly one of --base_model"):
        train_scone(_argv(root, "unused", "--from_scratch_preset", "200k", "--base_model", str(root / "llama")))


def test_train_scone_refuses_an_fgram_dir_of_other_files_before_loading_anything(root, tmp_path):
    """--fgram_dir without a vocabulary is where the mined one is saved, whole (``atomic_dir``): a folder holding
    other files would have been written into (and, made atomic, replaced) after minutes of mining."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--fgram_dir .*notes holds other files but no f-gram vocabulary"):
        train_scone(_argv(root, "refused", "--base_model", str(tmp_path / "no-such-base"), "--fgram_dir", str(folder)))
    assert (folder / "keep.txt").read_text() == "mine" and not (root / "refused").exists()
