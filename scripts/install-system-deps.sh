#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv: Debian's Chromium (driven headless by the Temporal
# Web UI tests through Playwright, which never downloads a browser of its own) and a font for its screenshots.
# Idempotent: a no-op when everything is present. Installing needs root (CI runs as root) or sudo.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Without recommends Chromium brings no font, and the screenshots would show boxes instead of text.
dpkg-query -W -f='${Status}' fonts-liberation 2>/dev/null | grep -q "install ok installed" || missing+=(fonts-liberation)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-system-deps: ${missing[*]} missing, and neither root nor sudo to install them" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
