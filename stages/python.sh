# The interpreter every stage of dvc.yaml runs under: the `python` on PATH when it has the project
# installed (an activated .venv, conda, ...), else the project's own .venv, so `.venv/bin/dvc repro` and
# `.venv/bin/dvc exp run` work without activating it; else one line saying what to do.
venv="${0%/*}/../.venv/bin/python"
if command -v python >/dev/null 2>&1 && python -c "import transmodal" >/dev/null 2>&1; then
  exec python "$@"
elif [ -x "$venv" ]; then
  exec "$venv" "$@"
fi
echo "$1: error: no Python with the transmodal package on PATH and no .venv here: run 'make setup', then '. .venv/bin/activate'" >&2
exit 2
