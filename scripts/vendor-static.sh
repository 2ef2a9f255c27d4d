#!/usr/bin/env bash
# Refresh static/vendor/ from the npm registry (pinned majors; htmx stays on 2.x, whose API the templates use).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp" && npm init -y >/dev/null && npm install --silent htmx.org@2.0 htmx-ext-ws@2 bootstrap@5.3 chart.js@4
N=$tmp/node_modules V=$here/static/vendor
mkdir -p "$V/bootstrap" "$V/htmx" "$V/chartjs"
cp "$N"/bootstrap/dist/css/bootstrap.min.css{,.map} "$N"/bootstrap/dist/js/bootstrap.bundle.min.js{,.map} "$N"/bootstrap/LICENSE "$V/bootstrap/"
cp "$N"/htmx.org/dist/htmx.min.js "$N"/htmx.org/LICENSE "$V/htmx/"
cp "$N"/htmx-ext-ws/dist/ws.min.js "$V/htmx/htmx-ext-ws.min.js"
cp "$N"/chart.js/dist/chart.umd.min.js{,.map} "$N"/chart.js/LICENSE.md "$V/chartjs/"
echo "vendored: $(ls -R "$V" | grep -c '\.')" files
