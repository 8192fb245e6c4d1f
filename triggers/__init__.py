"""Event sources watched by sp daemon: inotify, webhooks, serial ports, conditions, continuous.

What makes actions happen without a person typing, load samples included. The trigger file they
read is decoded in ``agents/trigger_file.py``; time-based schedules are ``schedules/``."""
