import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402  (after the path set-up above)

from tests.store_cases import BACKENDS, db, pg_cluster, store  # noqa: E402, F401  (fixtures of the store tests)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `store` (and not the SQLite file `db`) runs on every backend."""
    import inspect

    wanted = inspect.signature(metafunc.function).parameters
    if "store" in wanted and "db" not in wanted:
        metafunc.parametrize("store", BACKENDS, indirect=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """callgate serve with the example tenant, one per test module (modules that need another kind override it)."""
    from tests.serving import Server

    srv = Server(tmp_path_factory.mktemp("data"))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def stubs(server):
    """(Decisions stub, Admin stub) on one channel to `server`."""
    from callgate.v1 import admin_pb2_grpc, decisions_pb2_grpc

    channel = server.channel()
    yield decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)
    channel.close()


# -- the hand-computed decisions (test_reference*.py) run each case on both implementations ------------------

@pytest.fixture(params=["core", "reference"])
def impl(request):
    """Each implementation in turn (tests/decide_cases.py): every test that takes it runs against both."""
    from tests.decide_cases import IMPLEMENTATIONS

    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def ref(impl):
    """examples/acme.json in the implementation under test."""
    from tests.decide_cases import acme

    return impl(acme())


@pytest.fixture
def ref_approved(impl):
    """The same, with the documents of the LA number approved."""
    from tests.decide_cases import LA_SCHEDULED, acme

    return impl(acme(), approved=[LA_SCHEDULED])
