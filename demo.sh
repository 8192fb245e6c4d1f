#!/usr/bin/env bash
# The main job, end to end, on the embedded SQLite default: submit, run, status, audit, verify.
set -euo pipefail
SP="${SP_BIN:-sp}"
HOME_DIR="${DEMO_HOME:-$(pwd)/.sp-demo}"
rm -rf "$HOME_DIR"
sp() { "$SP" --home "$HOME_DIR" "$@"; }
say() { printf '\n\033[1m$ sp %s\033[0m\n' "$*"; }

say init; sp init
export PATH="$(dirname "$SP"):$PATH"
say "agent apply examples/research-001.yaml"; sp agent apply examples/research-001.yaml
say 'action execute --agent research-001 --task daily_arxiv_scan --checkpoint-enabled --notify-on-completion'
scan=$(sp action execute --agent research-001 --task daily_arxiv_scan --checkpoint-enabled --notify-on-completion --allow-unsandboxed)
say 'submit (a dependent summary, a flaky task with retries, a health check, bulk items)'
summary=$(sp submit --name summarize_findings --agent research-001 --after "$scan" -- \
  sh -c 'echo "summary of $SP_ACTION_ID written"')
flaky=$(sp action execute --agent research-001 --task flaky_sync --detach)
sp submit --name health_check --agent-create --agent monitor-001 --priority 10 -- uptime >/dev/null
printf 'echo item-%s\n' 1 2 3 | sp submit --each - >/dev/null
echo "submitted $summary $flaky and 4 more"
say 'agent policy research-001'; sp agent policy research-001
say 'submit --agent research-001 -- /usr/bin/../bin/passwd   (refused before anything is written)'
sp submit --agent research-001 -- /usr/bin/../bin/passwd || echo "(exit $?)"
tamper=$(sp submit --name tamper --agent research-001 --allow-unsandboxed -- \
  sh -c 'echo owned > /etc/sp-demo-tamper')
say status; sp status
say 'worker --concurrency 2 --until-idle'; sp worker --concurrency 2 --until-idle
say status; sp status
say "audit $scan"; sp audit "$scan"
say "audit $flaky"; sp audit "$flaky"
say "audit $tamper   (the kernel refused the write; the denial is on the record)"; sp audit "$tamper"
say 'sql "SELECT action_id, stage, access, target FROM v_security"'
sp sql "SELECT action_id, stage, access, target FROM v_security"
say 'sql "SELECT dim, key, total, completed, success_rate, retries, p50_ms, p95_ms FROM v_metrics"'
sp sql "SELECT dim, key, total, completed, success_rate, retries, p50_ms, p95_ms FROM v_metrics"
say 'replay --check'; sp replay --check
say verify; sp verify
echo
echo "ledger: $HOME_DIR/ledger.db  (try: sp --home $HOME_DIR sql 'SELECT * FROM v_events')"
