"""The gRPC server (`callgate serve`): issue #3 builds it over `engine`."""
