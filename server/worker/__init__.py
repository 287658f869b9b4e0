"""What one worker process holds and does beside answering: its state (snapshots, balances), the compile
process, upload spools, background jobs (top-ups, renewals, call expiry).

May import the store, the rules and the engine.
"""
