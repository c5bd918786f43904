# The interpreter every stage of dvc.yaml runs under: the `python` on PATH when it has the project
# installed (an activated .venv, conda, ...), else the project's own .venv, so `.venv/bin/dvc repro` and
# `.venv/bin/dvc exp run` work without activating it; else one line saying what to do.
# The stage imports this checkout's transmodal/ (PYTHONPATH), not the one the install points at: `dvc exp run
# --temp` and queued experiments run in a copy under <workspace>/.dvc/tmp/exps/, which has no .venv of its
# own, so the workspace's is tried after the checkout's.
# "Has the project": its distribution is installed there; -I, as the workspace's transmodal.egg-info would
# otherwise pass for it in any Python started here.
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
root=$(CDPATH='' cd -- "$here/.." && pwd) || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
installed='import importlib.metadata as m; m.version("transmodal")'
if command -v python >/dev/null 2>&1 && python -I -c "$installed" >/dev/null 2>&1; then
  exec python "$@"
fi
for venv in "$root/.venv/bin/python" "${root%/.dvc/tmp/exps/*}/.venv/bin/python"; do
  if [ -x "$venv" ]; then
    exec "$venv" "$@"
  fi
done
echo "$1: error: no Python with the transmodal package on PATH and no .venv here: run 'make setup', then '. .venv/bin/activate'" >&2
exit 2
