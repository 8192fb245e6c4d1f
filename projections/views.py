"""Documented SQL views for common questions; `sp sql` and any SQLite client can use them.

Percentiles are nearest-rank: p = the value at rank ceil(p/100 * n) of the sorted durations.
"""

from __future__ import annotations

NAMES = ("v_events", "v_actions", "v_metrics", "v_failures", "v_resources", "v_retries",
         "v_rollback_plans", "v_security")

DDL = """
CREATE VIEW v_events AS
SELECT seq, stream, version, type,
       strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000.0, 'unixepoch') AS time, ts, data
FROM events;

CREATE VIEW v_actions AS
SELECT action_id, name, action_type, agent, task, state, priority, attempts, max_attempts,
       strftime('%Y-%m-%dT%H:%M:%fZ', submitted_ms / 1000.0, 'unixepoch') AS submitted,
       strftime('%Y-%m-%dT%H:%M:%fZ', finished_ms / 1000.0, 'unixepoch') AS finished,
       duration_ms, exit_code, error_kind, error
FROM actions;

CREATE VIEW v_metrics AS
WITH dims AS (
    SELECT 'all' AS dim, '' AS key, outcome, duration_ms FROM metrics_attempts
    UNION ALL SELECT 'type', action_type, outcome, duration_ms FROM metrics_attempts
    UNION ALL SELECT 'agent', COALESCE(agent, ''), outcome, duration_ms FROM metrics_attempts
    UNION ALL SELECT 'task', COALESCE(agent, '') || '/' || task, outcome, duration_ms
              FROM metrics_attempts WHERE task IS NOT NULL
), ranked AS (
    SELECT dim, key, duration_ms,
           ROW_NUMBER() OVER (PARTITION BY dim, key ORDER BY duration_ms) AS rn,
           COUNT(*) OVER (PARTITION BY dim, key) AS cnt
    FROM dims WHERE outcome = 'completed'
), pct AS (
    SELECT dim, key,
           MIN(CASE WHEN rn >= (cnt * 50 + 99) / 100 THEN duration_ms END) AS p50_ms,
           MIN(CASE WHEN rn >= (cnt * 95 + 99) / 100 THEN duration_ms END) AS p95_ms
    FROM ranked GROUP BY dim, key
), att AS (
    SELECT dim, key, COUNT(*) AS attempts, SUM(outcome = 'retry') AS retries,
           SUM(outcome = 'interrupted') AS interruptions
    FROM dims GROUP BY dim, key
), counts AS (
    SELECT dim, key, SUM(n) AS total,
           SUM(CASE WHEN state = 'completed' THEN n ELSE 0 END) AS completed,
           SUM(CASE WHEN state = 'failed' THEN n ELSE 0 END) AS failed,
           SUM(CASE WHEN state = 'cancelled' THEN n ELSE 0 END) AS cancelled,
           SUM(CASE WHEN state = 'skipped' THEN n ELSE 0 END) AS skipped,
           SUM(CASE WHEN state IN ('pending', 'validating', 'queued', 'retrying',
                                  'interrupted')
                    THEN n ELSE 0 END) AS waiting,
           SUM(CASE WHEN state = 'executing' THEN n ELSE 0 END) AS executing
    FROM metrics_counts GROUP BY dim, key
)
SELECT counts.dim, counts.key, total, completed, failed, cancelled, skipped, waiting,
       executing,
       CASE WHEN completed + failed > 0
            THEN ROUND(1.0 * completed / (completed + failed), 4) END AS success_rate,
       COALESCE(att.attempts, 0) AS attempts, COALESCE(att.retries, 0) AS retries,
       COALESCE(att.interruptions, 0) AS interruptions, pct.p50_ms, pct.p95_ms
FROM counts LEFT JOIN att USING (dim, key) LEFT JOIN pct USING (dim, key)
WHERE total > 0;

CREATE VIEW v_failures AS
SELECT action_type, COALESCE(agent, '') AS agent, error_kind, COUNT(*) AS failures,
       MAX(finished_ms) AS last_ms
FROM metrics_attempts WHERE outcome IN ('failed', 'skipped', 'retry', 'interrupted')
GROUP BY action_type, COALESCE(agent, ''), error_kind;

CREATE VIEW v_security AS
SELECT e.seq, e.stream AS action_id, a.agent,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.ts / 1000.0, 'unixepoch') AS time,
       json_extract(e.data, '$.attempt') AS attempt,
       COALESCE(json_extract(e.data, '$.stage'), 'run') AS stage,
       json_extract(d.value, '$.access') AS access,
       COALESCE(json_extract(d.value, '$.path'), json_extract(d.value, '$.target'),
                json_extract(d.value, '$.port')) AS target,
       json_extract(d.value, '$.reason') AS reason
FROM events e, json_each(e.data, '$.denials') d
LEFT JOIN actions a ON a.action_id = e.stream
WHERE e.type = 'action.security_denied';

CREATE VIEW v_resources AS
SELECT COALESCE(agent, '') AS agent, task, action_type, COUNT(*) AS attempts,
       SUM(cpu_user_ms) AS cpu_user_ms, SUM(cpu_sys_ms) AS cpu_sys_ms,
       MAX(peak_rss_bytes) AS peak_rss_bytes, SUM(io_read_bytes) AS io_read_bytes,
       SUM(io_write_bytes) AS io_write_bytes
FROM metrics_attempts GROUP BY COALESCE(agent, ''), task, action_type;

CREATE VIEW v_retries AS
SELECT action_id, name, action_type, agent, state, attempts, attempts - 1 AS retries
FROM actions WHERE attempts > 1;

CREATE VIEW v_rollback_plans AS
SELECT group_id, action_id, completed_seq, compensation, state,
       ROW_NUMBER() OVER (PARTITION BY group_id ORDER BY completed_seq DESC) AS step
FROM rollback_plans;
"""
