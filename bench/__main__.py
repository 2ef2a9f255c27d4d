"""Run every benchmark, one after the other, each in its own process: `make bench` or `python -m bench`.

    python -m bench                       all of them
    python -m bench list_scale freshness  only these
    python -m bench --record              then write the headline figures into docs/performance.md

Each benchmark prints its set-up, its figures and its verdicts, and saves bench/results/<name>.json. The exit code
is non-zero when a benchmark could not run (refused or crashed); a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import RESULTS, ROOT, say

BENCHMARKS = ["launch_throughput", "ec2_overhead", "list_scale", "live_latency", "freshness"]
# what `python -m bench` runs for each name: freshness once per kind of cloud
RUNS: dict[str, list[list[str]]] = {"freshness": [["--provider", "sim"], ["--provider", "moto"]]}
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def run(names: list[str]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for name in names:
        for extra in RUNS.get(name, [[]]):
            label = " ".join([name, *extra])
            say(f"=== {label} ===")
            started = time.monotonic()
            codes[label] = subprocess.call([sys.executable, "-m", f"bench.{name}", *extra], cwd=ROOT)
            say(f"=== {label}: exit {codes[label]} after {time.monotonic() - started:.0f} s ===")
    return codes


def headline_table() -> str:
    """The headline rows of every saved result, as a Markdown table."""
    lines = ["| Benchmark | Measure | Figure | Target | Verdict | Measured |", "|---|---|---|---|---|---|"]
    for name in BENCHMARKS:
        # <name>.json, or one file per variant (freshness-sim.json); files kept under other names
        # (…-before.json) are not the latest run
        paths = [RESULTS / f"{name}.json"] + [RESULTS / f"{name}-{v[-1]}.json" for v in RUNS.get(name, [])]
        for path in paths:
            if not path.exists():
                continue
            saved = json.loads(path.read_text())
            when = saved.get("setup", {}).get("date", "")
            for row in saved.get("results", {}).get("headline", []):
                verdict = "met" if row.get("met") else "missed"
                lines.append(f"| {path.stem} | {row['metric']} | {row['value']} | {row['target']} | {verdict} | "
                             f"{when} |")
    return "\n".join(lines)


def record() -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        say(f"{DOC.relative_to(ROOT)} has no {BEGIN} … {END} block: nothing recorded")
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{headline_table()}\n{END}{tail}")
    say(f"headline figures written to {DOC.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--record", action="store_true", help="write the headline figures into docs/performance.md")
    options = parser.parse_args()
    codes = run(options.names or BENCHMARKS)
    for name, code in codes.items():
        say(f"{name}: {'ran' if code == 0 else f'did not run to the end (exit {code})'}")
    if options.record:
        record()
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
