"""callgate's server side: everything around the engine that serves it, stores its state and bills.

Its layers are folders, each importing only the ones below it (`tests/test_layers.py` checks):
`cli` (the `callgate` command) > `app` (`callgate serve`: options, start-up, worker, supervisor) and
`replica` (`callgate replica`: a proxy host's copy of the snapshots) >
`rpc` (servicers, errors, authentication) > `worker` (a worker's state, compile process, jobs) >
`store` (the narrow interface and SQLite) > `rules` (plain Python: calls, money, documents, numbers,
tokens) > `engine` (outside this package).  Beside them, used from any layer: `client` (what every client
shares: channels, the piecewise upload), `tls`, `metrics`, `codegen` (the gRPC code from proto/).
"""
