#!/usr/bin/env bash
# The main job, end to end, on the embedded SQLite default: submit, run, status, audit, verify.
set -euo pipefail
SP="${SP_BIN:-sp}"
HOME_DIR="${DEMO_HOME:-$(pwd)/.sp-demo}"
rm -rf "$HOME_DIR"
sp() { "$SP" --home "$HOME_DIR" "$@"; }
say() { printf '\n\033[1m$ sp %s\033[0m\n' "$*"; }

say init; sp init
say 'submit (a research task with steps, a dependent summary, a flaky job with retries)'
scan=$(sp submit --name daily_arxiv_scan --agent research-001 --task daily_arxiv_scan \
  --timeout 2h --shell -- \
  'i=0; for s in fetch_new_papers extract_abstracts classify_relevance; do
     i=$((i+1)); echo "step $i: $s"; sp progress $((i*33)) "$s" && sp checkpoint --step $i "{\"last\": \"$s\"}" >/dev/null
   done')
summary=$(sp submit --name summarize_findings --agent research-001 --after "$scan" -- \
  sh -c 'echo "summary of $SP_ACTION_ID written"')
flaky=$(sp submit --name flaky_sync --agent monitor-001 --retries 2 --backoff linear -- \
  sh -c 'echo "attempt $SP_ATTEMPT"; [ "$SP_ATTEMPT" -ge 2 ]')
sp submit --name health_check --agent monitor-001 --priority 10 -- uptime >/dev/null
printf 'echo item-%s\n' 1 2 3 | sp submit --each - >/dev/null
echo "submitted $scan $summary $flaky and 4 more"
export PATH="$(dirname "$SP"):$PATH"
say status; sp status
say 'worker --until-idle'; sp worker --until-idle
say status; sp status
say "audit $scan"; sp audit "$scan"
say "audit $flaky"; sp audit "$flaky"
say 'sql "SELECT dim, key, total, completed, success_rate, retries, p50_ms, p95_ms FROM v_metrics"'
sp sql "SELECT dim, key, total, completed, success_rate, retries, p50_ms, p95_ms FROM v_metrics"
say 'replay --check'; sp replay --check
say verify; sp verify
echo
echo "ledger: $HOME_DIR/ledger.db  (try: sp --home $HOME_DIR sql 'SELECT * FROM v_events')"
