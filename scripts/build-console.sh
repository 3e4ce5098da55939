#!/usr/bin/env bash
# Rebuilds the console's one bundled file, api-gateway/console/app/vendor/editor.js
# (CodeMirror 6 and fflate), from the versions pinned in
# api-gateway/console/editor/package-lock.json. Everything else in the console is
# served as written. The result is committed, so `cargo build` needs no Node.js.
set -euo pipefail
cd "$(dirname "$0")/../api-gateway/console/editor"
npm ci --no-audit --no-fund
npm run build
sha256sum ../app/vendor/editor.js
