# Sourced by the benchmarks/cuda_*.sh scripts, from the repository root, with OUT set: installs the wheels
# carried in .whl/ (trackers, supervision, ...) into /tmp/site, puts the project on PYTHONPATH, and defines
# `step`, which prints a timed section header.
set -u
mkdir -p "$OUT"
ROOT=$(pwd)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
step() { echo "=== $1 ($(date +%T))"; }
# demo_stages LIMIT STAGE...: copy the project into a new folder, cd there (the caller stays there) and run
# the demo's stages in order directly (no DVC), each under `timeout LIMIT`, printing their last lines.
demo_stages() {
  local limit=$1; shift
  work=$(mktemp -d)
  cp -r stages transmodal params.yaml "$work"/
  cd "$work" || exit 1
  for s in "$@"; do
    timeout "$limit" python3 stages/$s.py 2>&1 | grep -E "done in|error|Error" || echo "stage $s: no output"
  done
}
