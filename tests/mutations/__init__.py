"""A mutation suite of our own: named single textual edits of the central steps of every method
and shared mechanism, each of them a plausible way to get a paper wrong (a sign, an axis, a half,
a block, a constant, an off-by-one). `python -m tests.mutations [NAME ...]` applies each one to a
temporary copy of the repository (the real tree is never edited), runs the fast tests that guard
it there and reports it caught (a guard failed) or survived (every guard passed).

A mutation whose text is not found exactly once in its file, or whose mutant does not compile,
or whose guards do not run (none collected, a usage error), is an error, not a survivor: after a
refactor it must be rewritten, never silently skipped. Guards that hang past the timeout count as
caught, and the report says so. Guards are fast tests only (`-m "not slow and not browser"`);
tests/test_mutation_catalogue.py keeps the catalogue applicable in the ordinary suite.

The catalogue lives in one module per method; this module only gathers it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str             # unique, kebab-case, prefixed by the method
    path: str             # file to edit, relative to the repository root
    old: str              # text that must occur exactly once in that file
    new: str              # what it becomes
    guards: tuple[str, ...]  # pytest node ids (fast tests only) that must catch it
    why: str = ""         # the wrong implementation it stands for

    @property
    def guard_files(self) -> list[str]:
        return sorted({g.split("::")[0] for g in self.guards})


def catalogue() -> list[Mutation]:
    from . import adain, blora, security, shared, store, style_aligned, styledrop, trainer, vector

    out: list[Mutation] = []
    for module in (style_aligned, adain, trainer, styledrop, blora, vector, store, shared, security):
        out += module.MUTATIONS
    return out
