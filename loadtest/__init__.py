"""callgate's load tools: benchmarks, the load-test harness, fault runs, and the libraries they share.

Entry points (`python -m loadtest[.NAME]`), each a command and never imported by another tool:
`loadtest` (harness), `core_bench`, `server_bench`, `grpc_bench`, `h2load`, `lifecycle_bench`,
`sip_bench`, `crash_matrix`, `snapshot_fuzz`, and `bare_server` (the baseline server; the harness may hand
`--rpc lifecycle` to `lifecycle_bench.main`).

Libraries: `process` (servers and other processes started, stopped, metered), `fleet` (client processes
started together, results collected), `loadgen` (open and closed loops of gRPC calls, h2load runs),
`stats` (histograms, recorders), `report` (tables, JSON, PNG, the progress bar), `world` (numbers and
tenants), `plan` (requests with expected answers), `lifecycle_calls`, `server_sections` and
`server_resilience` (the loads and sections of their benchmark), `sip` (Kamailio and sipp).

What they may import: the standard library and dependencies, the generated `callgate.v1` messages, the
engine's public names (`engine`, and its modules other than `engine._core`) and the product's public
client (`server.client`); never the server's internals.
"""
