"""Agent configuration files (YAML or TOML, in the seed's shape) and their tasks."""
