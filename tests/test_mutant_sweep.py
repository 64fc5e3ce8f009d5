"""The mutant sweep's list stays in step with the code it mutates: each
mutant's text occurs exactly once (else the sweep refuses to run), changes
something, and names tests that exist. The sweep itself takes ~50 minutes
and runs by hand (docs/testing.md)."""

from pathlib import Path

import pytest

import mutant_sweep
from mutant_sweep import MUTANTS, TARGETS, Mutant, stale

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


def test_no_mutants_tests_run_on_the_previous_c_mutants_build(tmp_path, monkeypatch):
    """The sweep restored a C++ mutant's file but kept its build: a Python
    mutant after it ran its tests on that mutant's _C and could be credited
    with its failures. Each mutant's tests must run on a build of the sources
    as they are then (build and tests stubbed: they record what they saw)."""
    (tmp_path / "csrc").mkdir()
    (tmp_path / "mmcal_kernels").mkdir()
    (tmp_path / "csrc" / "k.cpp").write_text("kernel")
    (tmp_path / "mmcal_kernels" / "m.py").write_text("module")
    builds, seen = [], []
    monkeypatch.setattr(mutant_sweep, "build", lambda copy: builds.append((copy / "csrc" / "k.cpp").read_text()))

    def run_tests(copy, target, log, files):
        seen.append((target, builds[-1] if builds else "kernel", (copy / "mmcal_kernels" / "m.py").read_text()))
        log.write_text("FAILED (stub)\n")
        return False  # a test failed: noticed

    monkeypatch.setattr(mutant_sweep, "run_tests", run_tests)
    mutants = [Mutant("c++", "cpu", "csrc/k.cpp", "kernel", "KERNEL"),
               Mutant("python", "module", "mmcal_kernels/m.py", "module", "MODULE"),
               Mutant("python again", "module", "mmcal_kernels/m.py", "module", "M0DULE")]  # fmt: skip
    assert mutant_sweep.sweep(tmp_path, mutants) == 0
    assert seen == [("cpu", "KERNEL", "module"), ("module", "kernel", "MODULE"), ("module", "kernel", "M0DULE")]
    assert builds == ["KERNEL", "kernel"]  # one rebuild after the C++ mutant, none after a Python one
    assert (tmp_path / "csrc" / "k.cpp").read_text() == "kernel"
