#!/usr/bin/env bash
# Sets up, builds and runs breakerbox on the bundled default config (demo/breakerbox.json)
# in front of the bundled demo upstream (no internet needed). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh --target breakerbox breakerbox-demo-upstream
build/breakerbox --check-config demo/breakerbox.json
build/breakerbox-demo-upstream 127.0.0.1:9000 &
demo_pid=$!
trap 'kill $demo_pid 2>/dev/null || true' EXIT
cat <<'MSG'

  breakerbox is starting on http://127.0.0.1:8080 in front of the demo upstream (127.0.0.1:9000).
  Try, from another terminal:

    curl -si http://127.0.0.1:8080/v3/mail/send -H 'content-type: application/json' \
         -d '{"personalizations":[{"to":[{"email":"ada@example.com"}]}],"from":{"email":"ops@example.com"},"subject":"hi","content":[{"type":"text/plain","value":"hello"}]}'
    curl -si http://127.0.0.1:8080/crm/v3/objects/contacts
    curl -si http://127.0.0.1:8080/no/such/route          # 404 with a JSON explanation

  Access log lines (JSON) follow. Ctrl-C drains and stops.

MSG
build/breakerbox --config demo/breakerbox.json
