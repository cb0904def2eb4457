#!/usr/bin/env bash
# Wheels for running lc's GPU check and benchmarks on a GPU machine that has a PyTorch image (torch,
# triton, numpy, pandas, matplotlib, pillow, scipy, timm, tqdm, pyyaml, requests, attrs, pytest) but
# no network: the rest of what `lc bench ...` imports, at the lock's pins (requirements/lock.txt),
# for that machine's Python. Run here (where pip reaches PyPI); there, install them beside the image:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#   python3 -m lc.cli bench gpu-check --out DIR
# Usage: requirements/gpu_wheels.sh [PYTHON_VERSION (default 3.12)] [DEST (default .whl)]
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
dest=${2:-.whl}
# cityscapesscripts (the label table every command imports) with what its downloader and helpers
# import; jsonschema (the config schema) with its own needs
names=(cityscapesscripts appdirs pyquaternion coloredlogs humanfriendly
       jsonschema jsonschema-specifications referencing rpds-py)
pins=()
for name in "${names[@]}"; do
    pin=$(grep -i "^${name}==" requirements/lock.txt | cut -d' ' -f1) || {
        echo "requirements/gpu_wheels.sh: $name is not pinned in requirements/lock.txt" >&2; exit 2; }
    pins+=("$pin")
done
mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "${pins[@]}"
echo "requirements/gpu_wheels.sh: ${#pins[@]} wheels for CPython $python_version in $dest"
