"""Apply mutations to a temporary copy of the repository and run their guards there.

One copy per worker: each mutation is written into it, its guards run (`pytest -x`, fast tests
only, fixed order), and the original text is put back before the next one. The real tree is
only read.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import Mutation

ROOT = Path(__file__).resolve().parents[2]
FAST = "not slow and not browser"
CAUGHT, SURVIVED, ERROR = "caught", "survived", "ERROR"


@dataclass
class Outcome:
    mutation: Mutation
    status: str
    seconds: float = 0.0
    detail: str = ""           # the first failing guard, or what went wrong
    log: str = field(default="", repr=False)


def check(m: Mutation, root: Path = ROOT) -> str | None:
    """Why `m` cannot be applied to the tree at `root` (None when it can)."""
    path = root / m.path
    if not path.is_file():
        return f"{m.path} does not exist"
    count = path.read_text().count(m.old)
    if count != 1:
        return f"its text occurs {count} times in {m.path} (must be exactly once): rewrite the mutation"
    if m.old == m.new:
        return "the mutation changes nothing"
    try:
        compile(mutated_text(m, root), str(path), "exec")
    except SyntaxError as exc:
        return f"the mutant does not compile: {exc}"
    missing = [g for g in m.guard_files if not (root / g).is_file()]
    if missing:
        return f"guard files missing: {missing}"
    return None


def mutated_text(m: Mutation, root: Path = ROOT) -> str:
    return (root / m.path).read_text().replace(m.old, m.new, 1)


def project_files(root: Path = ROOT) -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a fresh clone plus the work in progress holds)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True).stdout.decode()
        return [f for f in out.split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but caches
        skip = {".git", ".venv", "__pycache__", "test-artifacts", "data", ".pytest_cache"}
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(root).parts)]


def make_copy(dest: Path, root: Path = ROOT) -> Path:
    for rel in project_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return dest


def run_guards(copy: Path, guards: list[str], timeout: float) -> tuple[int | None, str, float]:
    """(pytest exit code or None on timeout, output, seconds) of the guards inside `copy`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "pytest", *guards, "-x", "-q", "-rf", "-m", FAST, "-p", "no:randomly",
           "-p", "no:cacheprovider", f"--timeout={int(timeout)}"]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout + 60)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out, time.monotonic() - start


def first_failure(output: str) -> str:
    found = re.search(r"^FAILED (.+?)(?: - .*)?$", output, re.M)
    if found:
        return found.group(1)
    found = re.search(r"^ERROR (.+?)(?: - .*)?$", output, re.M)
    return f"error in {found.group(1)}" if found else ""


def run_one(m: Mutation, copy: Path, timeout: float) -> Outcome:
    problem = check(m, copy)  # the copy's own text: edits to the real tree meanwhile do not leak in
    if problem:
        return Outcome(m, ERROR, detail=problem)
    target = copy / m.path
    original = target.read_text()
    target.write_text(mutated_text(m, copy))
    try:
        rc, output, seconds = run_guards(copy, list(m.guards), timeout)
    finally:
        target.write_text(original)
    if rc is None:
        return Outcome(m, CAUGHT, seconds, f"timed out after {timeout:.0f} s", output)
    if rc == 1:
        return Outcome(m, CAUGHT, seconds, first_failure(output), output)
    if rc == 0:
        return Outcome(m, SURVIVED, seconds, "every guard passed", output)
    tail = output.strip().splitlines()[-1:] or [""]
    return Outcome(m, ERROR, seconds, f"pytest exit code {rc}: {tail[0][:160]}", output)


def baseline(mutations: list[Mutation], copy: Path, timeout: float) -> tuple[int | None, str, float]:
    """Every guard on the unmutated copy: they must all pass, or a 'caught' means nothing."""
    guards = sorted({g for m in mutations for g in m.guards})
    return run_guards(copy, guards, timeout * 4)


def run_all(mutations: list[Mutation], *, jobs: int = 1, timeout: float = 600, logs: Path | None = None,
            report=print) -> list[Outcome]:
    jobs = max(1, min(jobs, len(mutations)))
    with tempfile.TemporaryDirectory(prefix="studio-mutants-") as tmp:
        copies = [make_copy(Path(tmp) / f"w{i}") for i in range(jobs)]
        free = list(copies)
        outcomes: list[Outcome] = []

        def work(m: Mutation) -> Outcome:
            copy = free.pop()
            try:
                out = run_one(m, copy, timeout)
            finally:
                free.append(copy)
            report(row(out))
            if logs is not None and out.log:
                logs.mkdir(parents=True, exist_ok=True)
                (logs / f"{m.name}.log").write_text(out.log)
            return out

        with ThreadPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(work, mutations))
    return outcomes


def row(o: Outcome) -> str:
    guards = ", ".join(Path(f).stem for f in o.mutation.guard_files)
    return f"{o.mutation.name:<44} {o.status:<9} {o.seconds:6.1f}s  {guards:<40} {o.detail}"


def summary(outcomes: list[Outcome], seconds: float) -> str:
    n = {s: sum(o.status == s for o in outcomes) for s in (CAUGHT, SURVIVED, ERROR)}
    return (f"{len(outcomes)} mutations: {n[CAUGHT]} caught, {n[SURVIVED]} survived, {n[ERROR]} errors "
            f"in {seconds / 60:.1f} min")


def to_json(outcomes: list[Outcome]) -> str:
    return json.dumps([{"name": o.mutation.name, "status": o.status, "seconds": round(o.seconds, 1),
                        "guards": o.mutation.guard_files, "detail": o.detail} for o in outcomes], indent=1)
