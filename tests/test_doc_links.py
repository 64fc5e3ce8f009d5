"""Every file the write-up points to exists: relative Markdown links, and the
result files it names in backticks (``amd-epyc-...``, ``nvidia-h200-...``,
``benchmarks/results/...``). A figure's source that was renamed or never
committed is a claim nobody can check."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted(p for p in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("*/README.md"),
                           *ROOT.glob("benchmarks/results/*.md")]
              if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))  # fmt: skip
LINK = re.compile(r"\]\(([^)\s]+)\)")
RESULT_NAME = re.compile(r"`((?:benchmarks/results/)?(?:amd-epyc|nvidia-h200|triton-)[\w.-]*\.(?:json|png|txt|log|md))`")


def _targets(doc: pathlib.Path):
    text = doc.read_text()
    for link in LINK.findall(text):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue  # a URL or an anchor in the same page
        yield link, doc.parent / link.split("#")[0]
    for name in RESULT_NAME.findall(text):  # a pattern (`amd-epyc-2t-paired*.json`) does not match
        yield name, ROOT / name if "/" in name else ROOT / "benchmarks" / "results" / name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_the_docs_name_exists(doc):
    missing = sorted({name for name, path in _targets(doc) if not path.exists()})
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"
