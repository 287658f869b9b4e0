"""The `callgate` command: one module per group of commands, one helper for RPCs.

The top layer: may import the app (for `serve`) and everything below.
"""
