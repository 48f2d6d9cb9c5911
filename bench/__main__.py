"""`make bench`: the enrollment benchmarks, then the other bench modules as their own sections.

    python -m bench [--quick] [--profile] [--strict] [--only enrollment|others|stream|lifecycle]

Every figure is printed beside its target; the JSON goes to bench/results/. To measure a
proposed change against the same harness, run the app from another checkout:
`ONRAMP_BENCH_APP_ROOT=/path/to/patched/tree python -m bench --only enrollment`.
"""

import argparse
import asyncio
import importlib.util
import logging
import subprocess
import sys

from bench.enrollment_bench import Options, print_table, run

# Other sections, each its own process and stack: run when present; a missing server is
# their section's skip. stream_bench: live progress, stream against polling (issue 12).
# seats_bench: checkout creation with the cohort seat hold against without it (issue 13).
OTHER_SECTIONS = (
    "bench.stream_bench",
    "bench.seats_bench",
    "bench.tools_bench",
    "bench.pages_bench",
)
SECTION_TIMEOUT_S = 900


def quick(opt: Options) -> Options:
    """A short smoke run of every phase (for trying the harness, not for the figures)."""
    opt.starts_sequential, opt.starts_concurrent = 50, 200
    opt.noop_e2e_runs, opt.noop_throughput_s = 10, 8.0
    opt.deliveries, opt.throughput_s, opt.warmup_s = 300, 10.0, 2.0
    opt.ready_runs, opt.single_calls, opt.poll_s = 3, 40, 6.0
    return opt


# Sections that take the same --quick and --strict as the enrollment benchmarks.
FLAGGED_SECTIONS = ("bench.stream_bench", "bench.seats_bench")


def run_section(module: str, quick: bool = False, strict: bool = False) -> int | None:
    if importlib.util.find_spec(module) is None:
        print(f"\n== {module}: not present, skipped")
        return None
    print(f"\n== {module}", flush=True)
    argv = [sys.executable, "-m", module]
    if module in FLAGGED_SECTIONS:
        argv += ["--quick"] * quick + ["--strict"] * strict
    try:
        done = subprocess.run(argv, timeout=SECTION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{module}: stopped after {SECTION_TIMEOUT_S} s")
        return -1
    if done.returncode:
        print(f"{module}: exited with {done.returncode} (its servers may be unavailable)")
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run of every phase")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and worker")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--only", choices=["enrollment", "others", "stream", "lifecycle"], help="run one part only"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    failed = False
    if args.only == "stream":
        return 1 if run_section("bench.stream_bench", args.quick, args.strict) else 0
    if args.only != "others":
        opt = quick(Options()) if args.quick else Options()
        opt.profile = args.profile
        opt.only_lifecycle = args.only == "lifecycle"
        print("== enrollment benchmarks (floors measured in this run)", flush=True)
        report = asyncio.run(run(opt))
        print()
        print_table(report)
        for name, frames in report.raw.get("profiles", {}).items():
            print(f"\nprofile {name} (% of samples: our frames || leaf):")
            for frame, share in frames:
                print(f"  {share:5.1f}  {frame}")
        print(f"\nresults: {report.raw['results_file']}")
        failed = any(f.ok is False for f in report.figures)
    if args.only not in ("enrollment", "lifecycle"):
        for module in OTHER_SECTIONS:
            code = run_section(module, args.quick, args.strict)
            failed = failed or bool(code and module in FLAGGED_SECTIONS)
    # A missed target is a finding to report, not a crash, unless --strict.
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
