"""This device's operating system: resource limits, process identity, blob files, the wake pipe.

As the runner and the commands see it: resource limits (rlimits and cgroup v2 through
``/sys/fs/cgroup``), process identity read from ``/proc``, the home's content-addressed blob
files, and the named pipe that wakes idle workers.

It sits below ``commands/`` so that a command can name what to clean up or whom to wake, and
below ``runner/`` so that workers and recovery share one reading of the kernel's state; it knows
nothing of actions or events (only an agent's resource settings).
"""
