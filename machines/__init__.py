"""Lifecycle state machines (the rules) and the deciders that turn commands into events."""
