"""Schedules: time as a trigger (cron maths, slots, clock watch, adaptive slots, exports).

``cron``: cron maths and zones; ``slots``: which slots of a schedule fire or are skipped on a
tick; ``clockwatch``: suspend and restart evidence between ticks; ``adaptive``: a daily slot at
the quietest minute of a window, learnt from ``load_samples``; ``crontab`` and ``systemd``:
exports for the OS schedulers.

Pure maths and side tables only: ``commands/schedules.py`` decides and appends the events, and
the daemon's load sampler (``triggers/load_source.py``) records the samples.
"""
