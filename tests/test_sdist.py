"""The source distribution: what it holds and that it needs no torch to make
(fast), and (slow) that it installs into a fresh virtual environment, builds
the extension, and passes ``python -m mmcal_kernels.info`` outside the
repository."""

import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run first in a child: `import torch` then raises ImportError, as on a machine without torch.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"
BUILD_FILES = ["LICENSE", "MANIFEST.in", "README.md", "pyproject.toml", "setup.py"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCAL_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist of this checkout, made as `python -m build --sdist --no-isolation` makes it, without torch."""
    out = tmp_path_factory.mktemp("dist")
    code = NO_TORCH + "from setuptools import build_meta\nprint('SDIST=' + build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    name = [line for line in result.stdout.splitlines() if line.startswith("SDIST=")][-1][len("SDIST="):]
    return out / name


def _members(path):
    with tarfile.open(path) as tar:
        prefix = os.path.basename(path)[: -len(".tar.gz")] + "/"
        return {m.name[len(prefix):]: m for m in tar.getmembers() if m.isfile()}


def _tracked_sources():
    """Every file the build reads: csrc/ (all of it), the package's modules, the build files."""
    found = list(BUILD_FILES)
    for top in ("csrc", "mmcal_kernels"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                rel = os.path.relpath(os.path.join(folder, f), ROOT)
                if top == "csrc" or (f.endswith(".py") and f != "_build_info.py"):
                    found.append(rel.replace(os.sep, "/"))
    return found


def test_sdist_holds_every_source_and_no_build_product(sdist):
    members = _members(sdist)
    expected = _tracked_sources()
    assert any(f.startswith("csrc/") and f.endswith(".h") for f in expected)  # the walk found the headers
    missing = [f for f in expected if f not in members]
    assert not missing, f"missing from {sdist.name}: {missing}"
    for kind in (".h", ".cuh", ".cpp", ".cu"):
        assert any(f.startswith("csrc/") and f.endswith(kind) for f in members), kind
    stray = [f for f in members if f.endswith((".so", ".pyc", ".o")) or f.endswith("_build_info.py")]
    assert not stray, f"build products in the sdist: {stray}"


def test_sdist_carries_the_bsd_licence(sdist):
    with tarfile.open(sdist) as tar:
        prefix = os.path.basename(sdist)[: -len(".tar.gz")]
        licence = tar.extractfile(f"{prefix}/LICENSE").read().decode()
        pkg_info = tar.extractfile(f"{prefix}/PKG-INFO").read().decode()
    assert licence.startswith("BSD 3-Clause License") and "the mmcal_kernels authors" in licence
    assert "BSD-3-Clause" in pkg_info


def test_a_real_build_without_torch_says_what_to_do():
    code = NO_TORCH + "import runpy\nsys.argv = ['setup.py', 'build_ext']\nrunpy.run_path('setup.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    # torch is usually installed and hidden by pip's build isolation: the message says so first.
    assert "cannot import it" in result.stderr and "build isolation hides it" in result.stderr, result.stderr
    assert "--no-build-isolation" in result.stderr and "install torch first" in result.stderr, result.stderr


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_passes_info(sdist, tmp_path):
    """Builds the extension from the sdist alone (1.5-3 min on 2 cores)."""
    venv = tmp_path / "venv"
    # --system-site-packages: the machine's torch (and pip, setuptools), never a download.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", str(sdist)],
        env=_env(PIP_DISABLE_PIP_VERSION_CHECK="1"), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # MMCAL_NO_JIT: the cpu backend must come from the _C built from the sdist, not a JIT build.
    env = _env(MMCAL_NO_JIT="1")
    where = subprocess.run([python, "-c", "import mmcal_kernels; print(mmcal_kernels.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    info = subprocess.run([python, "-m", "mmcal_kernels.info"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert info.returncode == 0, info.stdout + info.stderr
    assert "cpu        usable" in info.stdout and "prebuilt mmcal_kernels._C" in info.stdout, info.stdout
    assert "PASS cpu" in info.stdout, info.stdout


def test_sdist_tests_collect_and_readme_links_resolve(sdist, tmp_path):
    """The tests shipped for packagers import and run files beside them (the
    benchmark scripts, the experiment's code), and the README links docs/:
    all in the sdist, where they once were not (collection failed on
    `import avdigits`). Collected with the package in pure-Python mode: no build."""
    import re

    members = _members(sdist)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        links = set(re.findall(r"\]\(((?:docs|benchmarks|python)/[^)#\s]+)", f.read()))
    assert links and not [link for link in links if link not in members], sorted(links - set(members))
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    top = tmp_path / os.path.basename(sdist)[: -len(".tar.gz")]
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=top, env=_env(MMCAL_NO_EXTENSION="1"), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0 and " error" not in result.stdout.splitlines()[-1], result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("setting,message", [("MAX_JOBS=abc", "MAX_JOBS='abc': expected a positive number"),
                                             ("MMCAL_CUDA=maybe", "MMCAL_CUDA='maybe': expected one of")])  # fmt: skip
def test_a_bad_build_setting_stops_the_build_naming_it(setting, message):
    """torch ignores a MAX_JOBS that is not a number, and MMCAL_CUDA=off once
    built CUDA: a build setting it cannot take stops the build, naming it."""
    name, value = setting.split("=")
    code = "import runpy, sys\nsys.argv = ['setup.py', 'build_ext']\nrunpy.run_path('setup.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(**{name: value}), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
