"""sp: a durable, auditable action runner for one device, on an SQLite event log.

Actions (shell commands, multi-step tasks, built-in action types) are decided by lifecycle state
machines and recorded in one append-only, hash-chained event log; every other table is a
projection of that log, rebuilt by ``sp replay`` and proven equal by ``sp replay --check``.

This is the one import package the distribution installs. Its subpackages are the repository's
top-level folders (in a checkout, ``sp/<name>`` is a relative symlink to ``../<name>``; the wheel
holds real folders), bottom layer first:

* :mod:`sp.ledger`: the event log: schema and migrations, codec, append, read, verify;
* :mod:`sp.machines`: lifecycle state machines, the rules every event is checked against;
* :mod:`sp.agents`: agent files and their tasks, and the trigger file that fires them;
* :mod:`sp.projections`: read models rebuilt from the log (actions, queue, metrics, ...);
* :mod:`sp.security`: capability policies and the kernel sandbox of one action's process;
* :mod:`sp.plans`: plan files (dependency graphs of actions), their validation, and the
  action-type registry that says what a step's ``type:`` means;
* :mod:`sp.schedules`: cron maths, slots, clock watch, adaptive windows, crontab and systemd;
* :mod:`sp.host`: this device's kernel: resource limits and cgroups, ``/proc``, blob files,
  the wake pipe;
* :mod:`sp.commands`: the write path: load state, ask the machine, append events;
* :mod:`sp.runner`: workers: claim, spawn, stream output, heartbeat, timeouts, cancel;
* :mod:`sp.triggers`: the daemon and its event sources (inotify, webhook, serial, ...);
* :mod:`sp.actions`: built-in action types;
* :mod:`sp.cli`: the command-line interface (``sp``, alias ``systemprompt-os``).

Each imports only those above it in this list (siblings on one layer: security, plans,
schedules and host; machines and agents, import neither each other); ``[tool.importlinter]``
in ``pyproject.toml`` declares it and ``make test`` checks it with ``lint-imports``.

Code imports them absolutely (``from sp.ledger.store import EventStore``), never by the bare
folder name: ``tests/test_one_package.py`` checks it.

Keep this module free of imports: the sandbox shim (``sp.security.enter``) imports it first,
and its start-up time is paid by every sandboxed action.
"""
