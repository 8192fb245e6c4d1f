"""Plans: dependency graphs of actions from YAML/TOML files, their validation and graph maths.

The reactor that moves a plan's own lifecycle (machines/plan.py) from its actions' outcomes,
and rollback runs, live here too."""
