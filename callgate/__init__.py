"""Generated gRPC code for the `callgate.v1` contract (proto/callgate/v1/*.proto).

`make` (server.codegen) writes callgate/v1/*_pb2.py, *_pb2_grpc.py and *.pyi
from the .proto files; they are build output, not committed.
"""
