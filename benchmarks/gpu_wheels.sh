#!/usr/bin/env bash
# Wheels for `make gpu-check` on a GPU box without a package registry (Python 3.12, x86_64, with torch and
# transformers already installed): what lfm and tests/test_gpu.py import beyond those, at the lock's versions,
# downloaded here (where a registry is reachable) into one folder of at most 64 MiB that travels with the
# working tree. On the box, `make gpu-check` installs from it, offline, only what is not already installed.
#
#   benchmarks/gpu_wheels.sh [DIR]        (default benchmarks/_wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-benchmarks/_wheels}
LIMIT_MIB=64
PYTHON=${PYTHON:-python3}
# what a box with torch + transformers may lack: pandas (lfm's core), plotly (the explorer's figures), pytest,
# accelerate (models loaded straight onto the GPU); each with the dependencies of its own that are not torch's or
# transformers'
PACKAGES="pandas python-dateutil pytz tzdata six plotly narwhals pytest pluggy iniconfig pillow psutil accelerate"
pins=()
for name in $PACKAGES; do
    pin=$(grep -iE "^${name}==[^ ]+" requirements/lock.txt | head -1 | cut -d' ' -f1)
    [ -n "$pin" ] || { echo "gpu_wheels: $name is not in requirements/lock.txt; run make lock" >&2; exit 2; }
    pins+=("$pin")
done
rm -rf "$DIR.partial" && mkdir -p "$DIR.partial"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$DIR.partial" "${pins[@]}"
size=$(du -sm "$DIR.partial" | cut -f1)
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "gpu_wheels: $size MiB of wheels exceed the $LIMIT_MIB MiB a device run carries; drop packages the box has" >&2
    rm -rf "$DIR.partial"; exit 2
fi
rm -rf "$DIR" && mv "$DIR.partial" "$DIR"
echo "wrote $DIR ($size MiB): ${pins[*]}"
