"""``python -m bench``: run every benchmark module in turn (or those named on the command line)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.pipeline", "bench.ehrsim_bench", "bench.webhook", "bench.mllp"]


def main(argv: list[str]) -> int:
    selected = [f"bench.{name}" for name in argv] or BENCHMARKS
    for module_name in selected:
        print(f"== {module_name}", flush=True)
        importlib.import_module(module_name).main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
