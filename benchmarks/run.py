"""Benchmark harness (not a test): writes benchmarks/RESULTS.md and benchmarks/results.json.

    python benchmarks/run.py                 # everything (~50 min on 2 cores)
    python benchmarks/run.py --only syft     # sections: data, accuracy, syft, demo, scaling, reference,
                                             # lbfgs-syft, dp-curve, dp-syft, secagg-syft, features,
                                             # features-curve, features-syft, fashion, small-sites,
                                             # refusal

A small runner: each section is a function in ``benchmarks/sections/`` (accuracy: in-process;
deployment: through datasites without DP; privacy: under DP and secure aggregation; features:
the scattering feature map, and the demo; budget: small sites under DP, refusing spent budgets);
the sections before "features" measure pixels;
``sections/markdown.py`` writes RESULTS.md.

Every figure is measured in the same run on this machine; timings are medians of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

from sections import accuracy, budget, deployment, features, privacy
from sections.markdown import write_markdown
from threadpoolctl import threadpool_info, threadpool_limits

from fl_syft.common.data import load_mnist

HERE = Path(__file__).resolve().parent
SECTIONS = ("data", "accuracy", "syft", "demo", "scaling", "reference", "lbfgs-syft", "dp-curve", "dp-syft",
            "secagg-syft", "features", "features-curve", "features-syft", "fashion", "small-sites", "refusal")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()],
            "blas_threads_used": 1, "date": time.strftime("%Y-%m-%d %H:%M")}


def main_bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to measure (others keep their figures in results.json)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite RESULTS.md from results.json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        write_markdown(json.loads((HERE / "results.json").read_text()))
        return 0
    warnings.filterwarnings("ignore", message="lbfgs failed to converge")  # local rounds stop early on purpose
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine()
    mnist = load_mnist()
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = {"data": accuracy.bench_data, "accuracy": lambda: accuracy.bench_accuracy(mnist),
                 "syft": lambda: deployment.bench_syft(mnist, work), "demo": lambda: features.bench_demo(work),
                 "scaling": lambda: deployment.bench_scaling(mnist, work),
                 "reference": lambda: accuracy.bench_reference(mnist),
                 "lbfgs-syft": lambda: deployment.bench_lbfgs_syft(mnist, work),
                 "dp-curve": lambda: privacy.bench_dp_curve(mnist),
                 "dp-syft": lambda: privacy.bench_dp_syft(mnist, work),
                 "secagg-syft": lambda: privacy.bench_secagg_syft(mnist, work),
                 "features": features.bench_features,
                 "features-curve": lambda: features.bench_features_curve(mnist),
                 "features-syft": lambda: features.bench_features_syft(mnist, work),
                 "fashion": features.bench_fashion,
                 "small-sites": lambda: budget.bench_small_sites(mnist),
                 "refusal": lambda: budget.bench_refusal(work)}
        for name in args.only:
            results[name] = steps[name]()
            results.setdefault("measured", {})[name] = time.strftime("%Y-%m-%d %H:%M")
            # ru_maxrss covers this process only: name the sections it measured, not all of results.json
            results["orchestrator_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            results["orchestrator_peak_rss_sections"] = args.only[: args.only.index(name) + 1]
            results_path.write_text(json.dumps(results, indent=2))
            write_markdown(results)
    print(f"wrote {HERE / 'RESULTS.md'} and {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
