"""What ``import hf_efficient_lm`` (all Auto registration needs) costs on top of Transformers' own Llama import.

Each sample is a fresh interpreter (imports are cached per process), timed from inside with ``perf_counter``:
baseline ``import transformers`` + ``from transformers import LlamaForCausalLM``, method the same plus
``import hf_efficient_lm``. The two alternate, so both see the same page cache and machine load; medians are
printed with the extra seconds, the ratio, and the heavy modules the package import must not pull in.

    python benchmarks/bench_import.py --repeats 7
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args

HEAVY = ("pandas", "datasets", "sklearn", "transformers.trainer", "transformers.trainer_utils")
BASELINE = "import transformers\nfrom transformers import LlamaForCausalLM\n"
PACKAGE = "import hf_efficient_lm\n"


def sample(with_package: bool) -> dict:
    """One fresh interpreter: seconds for the baseline imports (and the package's), heavy modules loaded."""
    code = (
        "import json, sys, time\nstart = time.perf_counter()\n" + BASELINE + "llama = time.perf_counter() - start\n"
        + (PACKAGE if with_package else "") + "total = time.perf_counter() - start\n"
        + f"print(json.dumps(dict(llama=llama, total=total, heavy=[m for m in {HEAVY!r} if m in sys.modules])))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per variant (alternating)")
    args = parse_benchmark_args(parser, argv)
    sample(True)  # warm the page cache for both variants
    baseline, method = [], []
    for _ in range(args.repeats):
        baseline.append(sample(False))
        method.append(sample(True))
    base = statistics.median(s["total"] for s in baseline)
    total = statistics.median(s["total"] for s in method)
    extra = statistics.median(s["total"] - s["llama"] for s in method)
    print(f"| import | median s ({args.repeats} fresh interpreters) |\n|---|---|")
    print(f"| transformers + LlamaForCausalLM | {base:.2f} |")
    print(f"| the same + hf_efficient_lm | {total:.2f} (x{total / base:.3f}; the package's own share {extra:.2f} s) |")
    heavy = sorted({m for s in method for m in s["heavy"]})
    print(f"heavy modules after `import hf_efficient_lm`: {heavy or 'none'}")


if __name__ == "__main__":
    main()
