# make run   : build everything and run callgate on the example settings
# make test  : build everything, lint, type-check and run the test suite
# make bench : the core benchmark (figures in README)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all build run test lint bench clean debug kamailio-module

all: build

# (Re)create the virtualenv when requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

PROTOS := $(wildcard proto/callgate/v1/*.proto)
GENERATED := callgate/v1/decisions_pb2.py

# The core compiled in place, then the project installed into the virtualenv in editable mode (for the
# `callgate` command: .venv/bin/callgate); that install skips the extension, built just before.
EDITABLE := $(VENV)/.editable

build: $(STAMP) $(GENERATED)
	$(PY) setup.py --quiet build_ext --inplace
	@$(MAKE) --no-print-directory $(EDITABLE)

$(EDITABLE): pyproject.toml setup.py $(STAMP)
	CALLGATE_NO_EXT=1 PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	test -x $(VENV)/bin/callgate
	touch $(EDITABLE)

# gRPC code (with .pyi stubs) from the .proto files; a test checks it is fresh.
$(GENERATED): $(PROTOS) $(STAMP)
	$(PY) -m server.codegen

# The secure setup on loopback: TLS with a throwaway CA (data/tls) and an owner token (data/owner.token),
# both made on the first run; delete them to start afresh.
CG = $(VENV)/bin/callgate --tls-ca data/tls/ca.pem
run: build
	@mkdir -p data
	@test -f data/tls/server.pem || $(VENV)/bin/callgate dev-ca data/tls > /dev/null
	@test -s data/owner.token || (umask 077 && $(VENV)/bin/callgate tokens create --role owner \
		--comment "make run" --data-dir data > data/owner.token)
	@echo "callgate: serving gRPC with TLS on 127.0.0.1:50051, tokens required, example tenant 'acme' (data in ./data)."
	@echo "  try, in another terminal:"
	@echo "    export CALLGATE_TOKEN=\$$(cat data/owner.token)"
	@echo "    $(CG) decide inbound --tenant acme --caller +14155550666 --called +14155550199"
	@echo "    $(CG) decide outbound --tenant acme --user u3 --destination 02071112222"
	@echo "    $(CG) settings history --tenant acme"
	@echo "    $(CG) billing balance --tenant acme       (sandbox payments; card 4000000000000002 declines)"
	@echo "    $(CG) documents upload +14155550100 SCAN.png --tenant acme"
	@echo "    $(CG) tokens create --role proxy          (a token for a SIP proxy; tokens list, tokens revoke ID)"
	@echo "  metrics: http://127.0.0.1:9464/metrics   offline demo: $(VENV)/bin/callgate demo   Ctrl-C stops."
	$(VENV)/bin/callgate serve --listen 127.0.0.1:50051 --data-dir data --seed examples/acme.json \
		--seed-credit 10.00 --log-format text --auth tokens \
		--tls-cert data/tls/server.pem --tls-key data/tls/server.key

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine server loadtest tests

# Kamailio's module callgate_events (the call events of a relayed INVITE captured in C) for the Kamailio installed
# here, against that version's source (Debian's source package: apt needs deb-src entries, .ci/run adds them); the
# Kamailio tests and the SIP benchmark load it from build/kamailio
# (run every time: a second when nothing changed, and a Kamailio upgraded since gets its module rebuilt)
kamailio-module:
	integrations/kamailio/callgate_events/build build/kamailio

test: build lint kamailio-module
	$(PY) -m pytest -q

bench: build
	$(PY) -m loadtest.core_bench

# the core's debug build (Cython checks on, -O0 -g -Wall -Werror) in build/debug/engine, never in place
debug: $(STAMP)
	CALLGATE_DEBUG=1 $(PY) setup.py --quiet build_ext
	cp engine/*.py build/debug/engine/

clean:
	rm -rf build engine/_core.c engine/_core*.so callgate/v1/*_pb2* \
		integrations/kamailio/callgate_journal.c integrations/kamailio/callgate_journal*.so
