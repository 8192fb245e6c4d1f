"""Workers: claim, spawn, stream output, heartbeat, timeouts, cancel."""
