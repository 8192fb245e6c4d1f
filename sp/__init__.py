"""sp: a durable, auditable action runner for one device, on an SQLite event log.

Actions (shell commands, multi-step tasks, built-in action types) are decided by lifecycle state
machines and recorded in one append-only, hash-chained event log; every other table is a
projection of that log, rebuilt by ``sp replay`` and proven equal by ``sp replay --check``.

This is the one import package the distribution installs. Its subpackages are the repository's
top-level folders (in a checkout, ``sp/<name>`` is a relative symlink to ``../<name>``; the wheel
holds real folders), bottom layer first:

* :mod:`sp.ledger`: the event log: schema and migrations, codec, append, read, verify;
* :mod:`sp.machines`: lifecycle state machines, the rules every event is checked against;
* :mod:`sp.agents`: agent configuration files and their tasks;
* :mod:`sp.projections`: read models rebuilt from the log (actions, queue, metrics, ...);
* :mod:`sp.security`: capability policies and the kernel sandbox of one action's process;
* :mod:`sp.plans`: plan files (dependency graphs of actions), their validation and reactor;
* :mod:`sp.commands`: the write path: load state, ask the machine, append events;
* :mod:`sp.runner`: workers: claim, spawn, stream output, heartbeat, timeouts, cancel;
* :mod:`sp.triggers`: schedules, the tick, the daemon and event sources;
* :mod:`sp.actions`: built-in action types;
* :mod:`sp.cli`: the command-line interface (``sp``, alias ``systemprompt-os``).

Code imports them absolutely (``from sp.ledger.store import EventStore``), never by the bare
folder name: ``tests/test_one_package.py`` checks it.

Keep this module free of imports: the sandbox shim (``sp.security.enter``) imports it first,
and its start-up time is paid by every sandboxed action.
"""
