"""Triggers: what makes actions happen without a person typing: schedules and event sources.

Time-based schedules (``cron``: cron maths; ``clockwatch``: suspend and restart evidence between
ticks; ``plan``: which slots fire or are skipped; ``crontab`` and ``systemd``: exports for the OS
schedulers; ``adaptive``: adaptive slots) and event sources (the trigger file, ``fire``, the
daemon and its sources: inotify, webhook, serial, conditions, continuous actions, load samples)."""
