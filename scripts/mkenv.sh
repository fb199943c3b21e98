#!/usr/bin/env bash
# mkenv.sh ENV_DIR PYTHON_VERSION PREFERRED_PATCH REQUIREMENTS...
# Create (or update) a virtualenv with the project installed editable, then write
# ENV_DIR/.installed so make skips this until pyproject.toml or a requirements file changes.
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
for r in "$@"; do reqs+=(-r "$r"); done
echo "mkenv: installing into $env_dir: the project (editable) and ${*}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$env_dir/bin/python" -m pip install --quiet --upgrade -e . "${reqs[@]}"
"$env_dir/bin/python" -c 'import sys, django, rq; print("mkenv: Python %s, Django %s, rq %s" % (sys.version.split()[0], django.__version__, rq.__version__))'
touch "$env_dir/.installed"
