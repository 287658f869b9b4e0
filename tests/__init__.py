"""callgate's tests (pytest + hypothesis), run by `make test`.

Unit tests per module (`test_<module>.py`), the core and the pure-Python reference held to each other
(`test_reference.py`, parametrised over both, and `test_differential.py`), and integration tests through
real parts: `callgate serve` processes on loopback (`serving.py`, over `loadtest.process.ServeProcess`),
real SQLite files, Kamailio and sipp.  Tests may import anything; nothing imports them.
"""
