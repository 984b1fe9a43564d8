#!/usr/bin/env bash
# Set up .venv for lenet; safe to run again (it only installs what is missing).
#   bash scripts/setup.sh          # the tool
#   bash scripts/setup.sh test     # the tool and its test dependencies
#   bash scripts/setup.sh notebook # the tool and Jupyter (docs/lenet-chapter.ipynb)
#   bash scripts/setup.sh ray      # the tool, Ray (sweeps on a cluster, lenet search) and TensorBoard
# torch comes first, pinned to the CPU build that lies on this kind of machine's disk:
# an open range on a machine without torch makes pip fetch a multi-GB CUDA build.
# Where the system Python already has torch (a GPU machine), the venv reuses it.
# Quiet unless something fails: pip's and venv's output goes to .venv-setup.log, which
# is printed whole when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU=${LENET_TORCH:-torch==2.13.0}
LOG=.venv-setup.log
: > "$LOG"

quietly() {  # quietly "what it does" command...: run it into the log; on failure show the log
  local what=$1
  shift
  echo "setup: $what"
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: $what failed; the whole log ($LOG):" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    quietly "creating .venv on the system Python (it has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'))" \
      "$PYTHON" -m venv --system-site-packages .venv
  else
    quietly "creating .venv" "$PYTHON" -m venv .venv
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  quietly "installing $TORCH_CPU (CPU build)" pip install -q --disable-pip-version-check "$TORCH_CPU"
fi
extras=""
case "${1:-}" in
  test) extras="[test,ray]" ;;  # the Ray tests run real Ray: the tests need the extra
  notebook|ray) extras="[$1]" ;;
esac
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.lenet-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! python -c "import lenet" 2>/dev/null; then
  quietly "installing lenet$extras into .venv" pip install -q --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi
python -c "import torch, lenet; print(f'setup: lenet {lenet.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
