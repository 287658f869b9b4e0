"""Rules of the product in plain Python: calls and their events, money, number transfers, document images.

No gRPC and no SQLite here (a test checks): the store and the RPC layer call these, never the other way.
"""
