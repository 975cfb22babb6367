#!/usr/bin/env bash
# Fill a directory with every wheel the image installs, on the host (its pip settings, proxy and
# CA certificates apply), for an offline build: WHEELHOUSE=DIR docker/build-image.sh.
# Wheels that already lie on this machine (a file:// index or find-links directory) are linked,
# not copied: the CUDA build of torch and its libraries are ~3 GB. The rest are downloaded.
# The host's Python must match the image's (3.11 on the bookworm base) and its platform.
#   docker/wheelhouse.sh DIR
#   TORCH_SPEC="torch==2.13.0+cpu torchvision==0.28.0" docker/wheelhouse.sh DIR   # CPU torch
set -euo pipefail
DIR=${1:?usage: docker/wheelhouse.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
EXTRA_PIP=${EXTRA_PIP:-psycopg[binary]>=3.2,<4}
mkdir -p "$DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -c "import sys, tomllib; d = tomllib.load(open(sys.argv[1], 'rb')); \
print('\n'.join(d['project']['dependencies']))" "$ROOT/pyproject.toml" >"$WORK/requirements.txt"
# Resolve without installing: the report names where each wheel comes from.
# shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
"$PYTHON" -m pip install -qq --dry-run --ignore-installed --only-binary :all: \
    --report "$WORK/report.json" $TORCH_SPEC -r "$WORK/requirements.txt" "$EXTRA_PIP" \
    pip "setuptools>=77" wheel
"$PYTHON" - "$WORK/report.json" "$DIR" >"$WORK/remote.txt" <<'PY'
import json, os, sys
from pathlib import Path
from urllib.parse import unquote, urlparse

report, out = json.load(open(sys.argv[1])), Path(sys.argv[2])
for item in report["install"]:
    url = item["download_info"]["url"]
    name = unquote(urlparse(url).path.rsplit("/", 1)[-1])
    if (out / name).exists():
        continue
    if url.startswith("file://"):
        os.symlink(unquote(urlparse(url).path), out / name)
    else:
        print(url.split("#", 1)[0])
PY
if [ -s "$WORK/remote.txt" ]; then
    "$PYTHON" -m pip download -qq --no-deps -d "$DIR" -r "$WORK/remote.txt"
fi
echo "[wheelhouse] $(find "$DIR" -name '*.whl' | wc -l) wheels in $DIR" \
    "($(find "$DIR" -type l | wc -l) linked from this machine)" >&2
