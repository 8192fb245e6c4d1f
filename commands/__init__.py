"""Commands: the one write path. Load state inside ``BEGIN IMMEDIATE``, ask the machine, append.

Side effects (spawning, killing) are never done here; they follow the commit, in ``runner/``.
"""
