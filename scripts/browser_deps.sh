#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it; Playwright's own browser
# download is never used). Installed with apt-get when missing and we are root; otherwise
# the browser tests skip locally and fail in CI, saying why.
set -euo pipefail

[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian's chromium and chromium-driver for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
        exit 0
    fi
    echo "browser_deps: apt-get could not install chromium" >&2
else
    echo "browser_deps: /usr/bin/chromium is missing and apt-get (as root) is not available" >&2
fi
echo "browser_deps: the browser tests will skip (and fail when CI=true)" >&2
