"""Plans: dependency graphs of actions from YAML/TOML files, their validation, action types.

The action-type registry (``action_types.py``) says what a step's ``type:`` means. The reactor
that moves a plan's own lifecycle (machines/plan.py) from its actions' outcomes, and rollback
runs, decide and append events, so they are commands (``commands/reactor.py``,
``commands/rollback.py``)."""
