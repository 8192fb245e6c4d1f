"""Plans: dependency graphs of actions from YAML/TOML files, their validation, and the reactor
that moves a plan's own lifecycle (machines/plan.py) from its actions' outcomes."""
