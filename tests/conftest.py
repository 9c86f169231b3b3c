import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import importlib.util  # noqa: E402
import logging  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from hf_efficient_lm.testing_utils import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


class DeprecationNotices(logging.Handler):
    """Transformers' deprecation notices (it logs most of them, often once per process) whose nearest caller among our
    own files is the package, a benchmark or an example: a rename they have not followed yet, caught while the old
    name still works. A test that uses an old name on purpose (the families accept ``past_key_values`` too) is not
    counted, and neither is Transformers calling its own deprecated path (its assisted decoding, say)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" not in message.lower() and "will be removed" not in message.lower():
            return
        ours = [frame for frame in traceback.extract_stack()[:-1]  # (not this method's own frame)
                if frame.filename.startswith(OUR_FILES)]  # (not CI's venvs inside the checkout)
        if ours and not ours[-1].filename.startswith(TESTS):
            self.found.append(f"{ours[-1].filename}:{ours[-1].lineno}: {message}")


REPOSITORY = Path(__file__).resolve().parent.parent
TESTS = str(REPOSITORY / "tests") + os.sep
OUR_FILES = (TESTS, str(Path(importlib.util.find_spec("hf_efficient_lm").origin).parent) + os.sep,  # (as installed)
             *(str(REPOSITORY / folder) + os.sep for folder in ("benchmarks", "examples")))


@pytest.fixture(autouse=True)
def no_deprecated_transformers_calls():
    notices = DeprecationNotices()
    transformers_logging.warning_once.cache_clear()  # a notice logged once per process shows up in every test
    verbosity = transformers_logging.get_verbosity()  # (an earlier test may have left it at ERROR: notices unlogged)
    transformers_logging.set_verbosity(min(verbosity, logging.WARNING))
    root = transformers_logging.get_logger("transformers")
    root.addHandler(notices)
    try:
        yield notices
    finally:
        root.removeHandler(notices)
        transformers_logging.set_verbosity(verbosity)
    if notices.found:
        pytest.fail("the package (or a benchmark or example) calls what Transformers deprecates:\n"
                    + "\n".join(notices.found), pytrace=False)
