#!/usr/bin/env bash
# mkenv.sh ENV_DIR PYTHON_VERSION PREFERRED_PATCH [-c CONSTRAINTS] REQUIREMENTS...
# Create (or update) a virtualenv with the project installed editable, then write
# ENV_DIR/.installed so make skips this until pyproject.toml or a requirements file changes.
# `-c FILE` passes FILE to pip as constraints (versions pinned, nothing added). Pip's own
# environment variables apply too (make sets PIP_UPGRADE_STRATEGY=eager for the newest).
set -euo pipefail

env_dir=$1 version=$2 patch=$3
shift 3
cd "$(dirname "$0")/.."

if [ -x "$env_dir/bin/python" ] && ! "$env_dir/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "'"$version"'".split("."))))'; then
    echo "mkenv: $env_dir is not Python $version; recreating it" >&2
    rm -rf "$env_dir"
fi
if [ ! -x "$env_dir/bin/python" ]; then
    python=$(scripts/find_python.sh "$version" "$patch")
    echo "mkenv: creating $env_dir with $python"
    "$python" -m venv "$env_dir"
fi

reqs=()
echo "mkenv: installing into $env_dir: the project (editable) and ${*}"
while [ $# -gt 0 ]; do
    if [ "$1" = -c ]; then reqs+=(-c "$2"); shift 2; else reqs+=(-r "$1"); shift; fi
done
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$env_dir/bin/python" -m pip install --quiet --upgrade -e . "${reqs[@]}"
echo "mkenv: $("$env_dir/bin/python" scripts/versions.py)"
touch "$env_dir/.installed"
