"""Quality/cost benchmark of the specialists: runs examples/specialize_experiment.py (see its --help).

    nice -n 10 python benchmarks/specialists/bench_specialize_quality.py --targets pydocs fortunes

Writes benchmarks/specialists/results/specialize_table.md, specialize_results.json and specialize_plot.png.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parents[2] / "examples" / "specialize_experiment.py"
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")
