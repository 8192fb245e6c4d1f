"""The command-line interface: parse, call one function, render. Nothing else."""
