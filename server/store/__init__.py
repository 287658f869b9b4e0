"""The store: the narrow interface (api), the SQLite implementation composed of one part per concern,
its migrations (numbered .sql files), fault naming, group commit and the offline check.

May import server.rules and the engine; never the RPC layer, the app or the CLI.
"""
