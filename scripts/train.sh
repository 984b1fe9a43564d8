#!/usr/bin/env bash
# The main job: set up, find (or fetch) Fashion-MNIST, train the chapter's LeNet-5.
#   bash scripts/train.sh [extra `lenet train` flags, e.g. --epochs 3 --name first-run]
# Data: --data-dir / LENET_DATA_DIR, ../shared/datasets beside a checkout, the user
# cache, /usr/share/datasets (Debian's dataset-fashion-mnist, installed here where
# apt-get works as root), else `lenet train` downloads from the official mirrors.
# The run is named d2l unless --name says otherwise, so the README's tour can use it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if [ -z "${LENET_DATA_DIR:-}" ] && [ -d ../shared/datasets/fashion-mnist ]; then
  export LENET_DATA_DIR="$(cd ../shared/datasets && pwd)"
fi
if ! LENET_NO_DOWNLOAD=1 python -c "from lenet.data.datasets import locate; locate('fashion-mnist')" 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "train.sh: Fashion-MNIST not found; installing Debian's dataset-fashion-mnist (log: .apt.log)"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
        >.apt.log 2>&1; then
      cat .apt.log >&2
      echo "train.sh: apt-get failed (log above); lenet will download from the official mirrors" >&2
    fi
  fi
fi
name=(--name d2l)
for arg in "$@"; do
  case "$arg" in --name|--name=*|--resume|--resume=*) name=() ;; esac
done
if [ ${#name[@]} -gt 0 ] && [ -d runs/d2l ]; then
  name=()  # a d2l run exists already: a new one gets the dated name (lenet train's default)
fi
exec lenet train --preset d2l "${name[@]}" "$@"
