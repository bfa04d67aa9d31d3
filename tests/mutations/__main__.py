"""python -m tests.mutations [NAME ...] [--list] [--baseline] [--jobs N] [--timeout S] [--json FILE]

Without names every mutation runs. Exit status 0 only when every mutation was caught."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from . import catalogue
from .runner import CAUGHT, baseline, check, make_copy, run_all, summary, to_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="mutations to run (default: all); a name ending in * is a prefix")
    p.add_argument("--list", action="store_true", help="list the mutations and their guards, run nothing")
    p.add_argument("--baseline", action="store_true", help="first run every guard on the unmutated copy")
    p.add_argument("--jobs", type=int, default=1, help="mutations run side by side (each its own copy)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutation")
    p.add_argument("--json", type=Path, help="also write the outcomes here")
    p.add_argument("--logs", type=Path, help="write each mutation's pytest output into this folder")
    a = p.parse_args(argv)

    every = catalogue()
    chosen = every
    if a.names:
        wanted = set(a.names)
        chosen = [m for m in every if m.name in wanted
                  or any(n.endswith("*") and m.name.startswith(n[:-1]) for n in wanted)]
        unknown = [n for n in wanted if not n.endswith("*") and n not in {m.name for m in every}]
        if unknown or not chosen:
            print(f"unknown mutations: {unknown or a.names}", file=sys.stderr)
            return 2
    if a.list:
        for m in chosen:
            problem = check(m)
            print(f"{m.name:<44} {m.path:<32} {' '.join(m.guards)}" + (f"  ERROR: {problem}" if problem else ""))
        return 0
    start = time.monotonic()
    if a.baseline:
        with tempfile.TemporaryDirectory(prefix="studio-baseline-") as tmp:
            rc, out, secs = baseline(chosen, make_copy(Path(tmp)), a.timeout)
        print(f"baseline: every guard on the unmutated tree: exit code {rc} in {secs:.0f} s")
        if rc != 0:
            print(out[-4000:])
            return 1
    print(f"{'mutation':<44} {'status':<9} {'time':>7}  {'guard files':<40} first failing guard")
    outcomes = run_all(chosen, jobs=a.jobs, timeout=a.timeout, logs=a.logs, report=lambda s: print(s, flush=True))
    print(summary(outcomes, time.monotonic() - start))
    if a.json:
        a.json.write_text(to_json(outcomes))
    return 0 if all(o.status == CAUGHT for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
