"""The gRPC layer: servicers that translate requests and delegate, the one error-to-status table, authentication.

May import the worker, the store, the rules and the engine; never the app or the CLI.
"""
