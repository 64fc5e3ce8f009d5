"""The mutant sweep's list stays in step with the code it mutates: each
mutant's text occurs exactly once (else the sweep refuses to run), changes
something, and names tests that exist. The sweep itself takes ~35 minutes
and runs by hand (docs/testing.md)."""

from pathlib import Path

import pytest

from mutant_sweep import MUTANTS, TARGETS, stale

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once_and_changes_the_code(mutant):
    assert stale([mutant], ROOT) == []
    assert mutant.old != mutant.new
    assert mutant.target in TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_targets_name_existing_test_files(target):
    files, _ = TARGETS[target]
    for f in files:
        assert (ROOT / f).is_file(), f"{target}: no {f}"


def test_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
