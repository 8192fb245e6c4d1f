"""Triggers: what makes actions happen without a person typing. Time-based schedules for now
(``cron``: cron maths; ``clockwatch``: suspend and restart evidence between ticks; ``plan``:
which slots fire or are skipped; ``crontab`` and ``systemd``: exports for the OS schedulers)."""
