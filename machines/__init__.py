"""Lifecycle state machines (the rules): the action's and the plan's states and transitions.

Each lifecycle is declared once, as data, with ``transitions`` (one shared ``Lifecycle`` class);
commands ask it whether a transition is legal before they append, and replay folds stored
events through a table compiled from the same machine."""
