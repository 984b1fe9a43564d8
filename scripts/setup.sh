#!/usr/bin/env bash
# Set up .venv for lenet; safe to run again (it only installs what is missing).
#   bash scripts/setup.sh          # the tool
#   bash scripts/setup.sh test     # the tool and its test dependencies
#   bash scripts/setup.sh notebook # the tool and Jupyter (docs/lenet-chapter.ipynb)
#   bash scripts/setup.sh ray      # the tool, Ray (sweeps on a cluster, lenet search) and TensorBoard
# Which torch (before any extra; pip never sees an open torch range, which on Linux
# resolves to the newest CUDA build, 5 GB with its nvidia_* packages):
#   (default)                 torch==2.13.0 from PyTorch's CPU index, asked first with a 5 s
#                             timeout; where it cannot be reached, from pip's default index,
#                             with one line saying so (on Linux that is the CUDA build)
#   --torch SPEC, LENET_TORCH=SPEC   a pinned requirement (torch==2.13.0+cpu) or a wheel file
#   --cuda                    from pip's default index, without asking the CPU index
#   LENET_TORCH_INDEX=URL     another CPU index (a mirror of download.pytorch.org/whl/cpu)
# Where the system Python already has torch (a GPU machine) and no choice is given, the
# venv reuses it. Quiet unless something fails: pip's and venv's output goes to
# .venv-setup.log, which is printed whole when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${LENET_TORCH:-}
TORCH_INDEX=${LENET_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
LOG=.venv-setup.log

usage() {  # usage "what is wrong": one line, exit 2
  echo "setup: $1 (usage: bash scripts/setup.sh [--torch SPEC] [--cuda] [test|notebook|ray])" >&2
  exit 2
}

cuda=""
extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) [ $# -ge 2 ] || usage "--torch needs a requirement (torch==2.13.0+cpu) or a wheel file"
             TORCH=$2; shift ;;
    --torch=*) TORCH=${1#--torch=} ;;
    --cuda) cuda=1 ;;
    test) extras="[test,ray]" ;;  # the Ray tests run real Ray: the tests need the extra
    notebook|ray) extras="[$1]" ;;
    *) usage "unknown argument '$1'" ;;
  esac
  shift
done
chosen=${TORCH:+1}${cuda}
TORCH=${TORCH:-torch==2.13.0}
case "$TORCH" in
  *.whl) [ -f "$TORCH" ] || usage "no wheel file at '$TORCH'"
         TORCH=$(cd "$(dirname "$TORCH")" && pwd)/$(basename "$TORCH") ;;
  torch==[0-9]*) [[ "$TORCH" =~ ^torch==[0-9][0-9A-Za-z.+_-]*$ ]] \
                   || usage "'$TORCH' is not one torch version (e.g. torch==2.13.0+cpu)" ;;
  *) usage "'$TORCH' must pin one version (torch==2.13.0+cpu) or name a wheel file: an open range lets pip pick the newest torch, on Linux a 5 GB CUDA build" ;;
esac
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

cpu_index_answer() {  # "ok", or why PyTorch's CPU index cannot be reached (5 s at most)
  python - "$TORCH_INDEX" <<'EOF'
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5) as answer:
        answer.read(1)
    print("ok")
except urllib.error.HTTPError as exc:
    print(f"HTTP {exc.code}")
except Exception as exc:  # refused, no route, DNS, TLS, timeout: all mean "not from here"
    print(getattr(exc, "reason", None) or exc)
EOF
}

if [ ! -x .venv/bin/python ]; then
  if [ -z "$chosen" ] && "$PYTHON" -c "import torch" 2>/dev/null; then
    quietly "creating .venv on the system Python (it has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'))" \
      "$PYTHON" -m venv --system-site-packages .venv
  else
    quietly "creating .venv" "$PYTHON" -m venv .venv
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
pip=(pip install -q --disable-pip-version-check)
if python -c "import torch" 2>/dev/null; then
  installed=$(python -c "import importlib.metadata as m; print(m.version('torch'))")
  if [ -n "$chosen" ] && [ "$TORCH" != "torch==$installed" ] && [ "$TORCH" != "torch==${installed%%+*}" ]; then
    echo "setup: .venv has torch $installed already; for $TORCH instead, remove .venv first"
  fi
elif [ -f "$TORCH" ]; then
  quietly "installing torch from $TORCH" "${pip[@]}" "$TORCH"
elif [ -n "$cuda" ]; then
  quietly "installing $TORCH from pip's default index (--cuda: on Linux the CUDA build, about 5 GB)" "${pip[@]}" "$TORCH"
else
  answer=$(cpu_index_answer)
  if [ "$answer" = ok ]; then
    quietly "installing $TORCH (CPU build, from $TORCH_INDEX)" "${pip[@]}" --index-url "$TORCH_INDEX" "$TORCH"
  else
    echo "setup: PyTorch's CPU index ($TORCH_INDEX) cannot be reached ($answer), so $TORCH comes from pip's default index: on Linux that is the CUDA build, about 5 GB (a CPU wheel file instead: --torch FILE.whl)"
    quietly "installing $TORCH from pip's default index" "${pip[@]}" "$TORCH"
  fi
fi
# Read from the package's metadata: importing torch before numpy is installed warns.
torch_version=$(python -c "import importlib.metadata as m; print(m.version('torch'))")
if ! python -c "import sys; sys.exit(tuple(map(int, sys.argv[1].split('.')[:2])) < (2, 11))" "$torch_version"; then
  echo "setup: .venv's torch $torch_version is older than lenet needs (2.11+); remove .venv and run again, with --torch torch==2.13.0+cpu or a wheel file where the system Python's torch is the old one" >&2
  exit 1
fi
# lenet asks for torch>=2.11: pinned to the torch just installed, pip cannot swap it for another.
echo "torch==$torch_version" > .venv/torch-pin.txt
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.lenet-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! python -c "import lenet" 2>/dev/null; then
  quietly "installing lenet$extras into .venv" "${pip[@]}" --constraint .venv/torch-pin.txt -e ".$extras"
  touch "$stamp"
fi
python -c "import torch, lenet; print(f'setup: lenet {lenet.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}', end='')"
echo "; .venv $(du -sh .venv 2>/dev/null | cut -f1)"
