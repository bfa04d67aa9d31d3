#!/usr/bin/env bash
# The test command: installs what the tests need, then runs them.
#   bash tests/run.sh [pytest arguments]
# Browser tests drive Debian's Chromium (/usr/bin/chromium), never a downloaded browser.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-dev.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "The browser tests need Debian's chromium: sudo apt-get install chromium" >&2
  fi
fi
exec python -m pytest "$@"
