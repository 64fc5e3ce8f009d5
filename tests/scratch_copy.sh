# Sourced by the scripts that work on a copy of the checkout, so that the
# checkout's own files and build are never touched (tests/sanitizers.sh,
# tests/cuda_emu/barrier_sweep.sh).
#
# scratch_copy DIR SETTING [keep-build]: refuses DIR if it is the checkout or
# /, naming SETTING (the variable that chose DIR); empties DIR (but for its
# build/ with keep-build, whose objects a rebuild reuses), then puts there the
# files git tracks, as they are on disk (uncommitted edits included).
# Run from the checkout's root.
scratch_copy() {
  local dir=$1 setting=$2 keep=${3:-}
  if [ "$(realpath -m "$dir")" = "$(pwd)" ] || [ "$(realpath -m "$dir")" = / ]; then
    echo "$setting must be a scratch directory, not $dir" >&2
    exit 2
  fi
  mkdir -p "$dir"
  if [ "$keep" = keep-build ]; then
    find "$dir" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  else
    find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  fi
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$dir"
}
