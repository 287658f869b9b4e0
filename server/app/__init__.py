"""`callgate serve`: options, start-up checks, the worker's gRPC server, the supervisor of N workers, health.

May import everything below it (rpc, worker, store, rules, engine); never the CLI.
"""
