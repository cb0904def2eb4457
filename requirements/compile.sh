#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every Python dependency of the project and of its dev extra
# (pyproject.toml), pinned, resolved by uv (`pip install uv`) against PyPI for CPython 3.11; then
# the conda envs (envs/*.yaml) from the lock (requirements/sync_envs.py).
# uv keeps the pins already in the lock where they still satisfy pyproject.toml; pass `--upgrade`
# (or `--upgrade-package NAME`) to move to newer releases, then run the tests and commit the lock.
# The CUDA runtime libraries (requirements/cuda-libs.txt) are left out: only torch's CUDA wheels
# need them, and those wheels pin them themselves; PyTorch's CPU wheels need none.
set -euo pipefail
cd "$(dirname "$0")/.."
no_emit=()
for p in $(cat requirements/cuda-libs.txt); do no_emit+=(--no-emit-package "$p"); done
uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
    --custom-compile-command "requirements/compile.sh" \
    --output-file requirements/lock.txt "${no_emit[@]}" "$@"
python3 requirements/sync_envs.py "$(command -v uv)"
