"""benchmarks/gpu/gate_blocks.py: its smoke run (Triton's interpreter, tiny
sizes) goes through every step of every setting asked for and writes every
row, so a lent GPU's minutes are not spent finding a broken script."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")  # the smoke run is the Triton backend's

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "gate_blocks.py")
STEPS = ["gates", "gates+backward", "module fwd", "module fwd+bwd"]


def _smoke(tmp_path, *args):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("MMCAL_TRITON_GATE_BLOCKS", None)
    return subprocess.run([sys.executable, SCRIPT, "--backends", "triton", "--smoke", *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip


def test_the_smoke_run_writes_a_row_per_setting_and_step(tmp_path):
    result = _smoke(tmp_path, "--settings", "16x16", "1x16")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "gate-blocks.json").read_text())
    assert data["meta"]["smoke"] is True and data["meta"]["variables"] == {"triton": "MMCAL_TRITON_GATE_BLOCKS"}
    got = [(r["backend"], r["setting"], r["batch"], r["step"]) for r in data["rows"]]
    assert got == [("triton", s, 2, step) for s in ("16x16", "1x16") for step in STEPS], got
    assert all(r["wall_ms"] > 0 for r in data["rows"]), data["rows"]


def test_batches_time_every_setting_at_each_batch_size(tmp_path):
    """--batches: the tiles' trade (more programs, each reading every weight)
    moves with B, so the next GPU run times B = 32 and 256. A row's batch is
    read from the inputs its steps ran on, not from the argument."""
    result = _smoke(tmp_path, "--settings", "16x16", "--batches", "3", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "gate-blocks.json").read_text())["rows"]
    assert [(r["batch"], r["step"]) for r in rows] == [(b, step) for b in (3, 1) for step in STEPS], rows
    assert "B=3 " in result.stdout and "B=1 " in result.stdout, result.stdout


def test_a_batch_below_one_is_refused(tmp_path):
    result = _smoke(tmp_path, "--batches", "0")
    assert result.returncode == 2 and "--batches" in result.stderr, result.stdout + result.stderr


def test_a_smoke_run_refuses_what_it_cannot_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, SCRIPT, "--backends", "cuda", "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 2 and "triton backend alone" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "gate-blocks.json").exists()
