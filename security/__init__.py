"""Capability policies and the kernel sandbox for one action's process.

Keep this module free of imports: ``python -I -m sp.security.enter`` imports it first, and the
shim's startup time is paid by every sandboxed action.
"""
