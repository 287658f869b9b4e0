"""`callgate serve`: its options (one source of defaults), start-up checks, one worker built apart from
running it, the supervisor of N workers, log lines and health.

May import everything below it (rpc, worker, store, rules, engine); never the CLI.
"""
