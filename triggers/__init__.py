"""Event sources: what makes actions happen without a person typing, watched by ``sp daemon``
(inotify, webhook, serial ports, conditions, continuous actions, load samples). The trigger file
they read is decoded in ``agents/trigger_file.py``; time-based schedules are ``schedules/``."""
