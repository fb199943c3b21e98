#!/usr/bin/env bash
# Print the path of a Python interpreter of the version given (e.g. 3.12), preferring
# pyenv's build of the exact patch release we test with. Exits 1 if none is found.
set -euo pipefail

want=${1:?usage: find_python.sh MAJOR.MINOR [PREFERRED_PATCH]}
patch=${2:-}

is_version() {  # is_version PATH: does PATH run and report Python $want?
    [ -x "$1" ] || return 1
    got=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
    [ "$got" = "$want" ]
}

candidates=()
root=$(pyenv root 2>/dev/null || true)
for r in "$root" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$r" ] || continue
    [ -n "$patch" ] && candidates+=("$r/versions/$patch/bin/python")
    for d in "$r"/versions/"$want".*; do
        [ -d "$d" ] && candidates+=("$d/bin/python")
    done
done
for name in "python$want" python3; do
    p=$(command -v "$name" 2>/dev/null || true)
    [ -n "$p" ] && candidates+=("$p")
done

for c in "${candidates[@]}"; do
    if is_version "$c"; then
        echo "$c"
        exit 0
    fi
done
echo "find_python.sh: no Python $want found (looked at pyenv versions, python$want, python3)." >&2
exit 1
