"""The mutation suite's catalogue stays runnable (python -m tests.mutations runs it): every
mutation's text occurs exactly once in its file and the mutant compiles, so a refactor that moves
the code makes this fail instead of the mutation silently 'surviving'; every guard is a fast test
that exists. Running the mutations themselves takes minutes: CI does it with STUDIO_MUTATIONS=1."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mutations import catalogue
from tests.mutations.runner import ROOT, check

MUTATIONS = catalogue()


def test_enough_named_mutations_of_every_method():
    names = [m.name for m in MUTATIONS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", n) for n in names)
    prefixes = {n.split("-")[0] for n in names}
    assert {"sa", "adain", "train", "styledrop", "blora", "vf", "rast", "store", "files"} <= prefixes


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_once_and_its_guards_are_fast_tests(m):
    assert check(m) is None, check(m)
    assert m.guards
    for guard in m.guards:
        path, _, name = guard.partition("::")
        name = name.split("[")[0]  # a parametrized case: its function
        source = (ROOT / path).read_text()
        assert Path(path).name.startswith("test_") and name, guard
        found = re.search(rf"((?:^@.*\n)*)^def {re.escape(name)}\(", source, re.M)
        assert found, f"{guard}: no such test"
        assert not re.search(r"mark\.(slow|browser)", found.group(1)), f"{guard} is not a fast test"
        assert not re.search(r"^pytestmark\s*=.*(slow|browser)", source, re.M), f"{path} is not fast"
