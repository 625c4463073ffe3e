#!/usr/bin/env bash
# Sets up, builds and runs breakerbox on the bundled default config (demo/breakerbox.json)
# in front of the bundled demo upstream (no internet needed). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
targets=(breakerbox breakerbox-demo-upstream)
[[ -f ctl/CMakeLists.txt ]] && targets+=(breakerctl)
scripts/build.sh --target "${targets[@]}"
build/breakerbox --check-config demo/breakerbox.json
build/breakerbox-demo-upstream 127.0.0.1:9000 &
demo_pid=$!
trap 'kill $demo_pid 2>/dev/null || true' EXIT
# The demo upstream must be the one answering on :9000 (another program there would get the
# demo's traffic): wait up to 10 s for an answer that names it, and stop otherwise.
ready=
for _ in $(seq 100); do
  if ! kill -0 "$demo_pid" 2>/dev/null; then
    break  # it exited: the port is taken
  fi
  if curl -s -D - -o /dev/null --max-time 1 http://127.0.0.1:9000/ 2>/dev/null | grep -qi '^server: demo-upstream'; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ -z $ready ]] || ! kill -0 "$demo_pid" 2>/dev/null; then
  echo "demo: the demo upstream did not start on 127.0.0.1:9000 (is the port in use?)" >&2
  exit 1
fi
cat <<'MSG'

  breakerbox is starting on http://127.0.0.1:8080 in front of the demo upstream (127.0.0.1:9000).
  Try, from another terminal:

    curl -si http://127.0.0.1:8080/v3/mail/send -H 'content-type: application/json' \
         -d '{"personalizations":[{"to":[{"email":"ada@example.com"}]}],"from":{"email":"ops@example.com"},"subject":"hi","content":[{"type":"text/plain","value":"hello"}]}'
    curl -si http://127.0.0.1:8080/crm/v3/objects/contacts
    curl -si http://127.0.0.1:8080/no/such/route          # 404 with a JSON explanation

  The demo caps each campaign (x-campaign-id header) at 20 recipients an hour; over it,
  mail is held in quarantine (202 + x-breakerbox-ticket) until an operator decides:

    for i in 1 2 3; do curl -s http://127.0.0.1:8080/v3/mail/send -H 'x-campaign-id: spring' \
      -H 'content-type: application/json' \
      -d '{"personalizations":[{"to":[{"email":"a@x.test"},{"email":"b@x.test"},{"email":"c@x.test"},{"email":"d@x.test"},{"email":"e@x.test"},{"email":"f@x.test"},{"email":"g@x.test"},{"email":"h@x.test"}]}]}'; echo; done

  Operators use the admin API on 127.0.0.1:9901 (demo token below; see docs/admin-api.md):

    export BREAKERBOX_TOKEN=demo-operator-token
    build/breakerctl breakers
    build/breakerctl quarantine list --breaker campaign-volume
    build/breakerctl quarantine release --breaker campaign-volume --rate 5 --reason "segment checked"

  Breaker states, held mail and the caps' counts are kept in var/breakerbox.db across runs
  (as in production: a restart never reopens a breaker nor refills a cap); `rm -rf var/`
  before a run starts the demo afresh.

  Access log lines (JSON) follow. Ctrl-C drains and stops.

MSG
# In the background with a wait, so a TERM to this script (a supervisor, `timeout`) reaches
# breakerbox too. On Ctrl-C or TERM, breakerbox drains first; the demo upstream stops after.
build/breakerbox --config demo/breakerbox.json &
bb_pid=$!
trap 'kill $bb_pid $demo_pid 2>/dev/null || true' EXIT
stop() {
  kill -TERM "$bb_pid" 2>/dev/null || true
  wait "$bb_pid" 2>/dev/null || true
  exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
wait "$bb_pid"
