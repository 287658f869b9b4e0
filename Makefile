# make run   : build everything and run callgate on the example settings
# make test  : build everything, lint, type-check and run the test suite
# make bench : the core benchmark (figures in README)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all build run test lint bench clean

all: build

# (Re)create the virtualenv when requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

PROTOS := $(wildcard proto/callgate/v1/*.proto)
GENERATED := callgate/v1/decisions_pb2.py

build: $(STAMP) $(GENERATED)
	$(PY) setup.py --quiet build_ext --inplace

# gRPC code (with .pyi stubs) from the .proto files; a test checks it is fresh.
$(GENERATED): $(PROTOS) $(STAMP)
	$(PY) -m server.codegen

run: build
	@echo "callgate: serving gRPC on 127.0.0.1:50051 with the example tenant 'acme' (data in ./data); Ctrl-C stops."
	@echo "  try, in another terminal:"
	@echo "    $(PY) -m callgate decide inbound --tenant acme --caller +14155550666 --called +14155550199"
	@echo "    $(PY) -m callgate decide outbound --tenant acme --user u3 --destination 02071112222"
	@echo "    $(PY) -m callgate settings history --tenant acme"
	@echo "    $(PY) -m callgate billing balance acme        (sandbox payments; card 4000000000000002 declines)"
	@echo "    $(PY) -m callgate documents upload +14155550100 SCAN.png --tenant acme"
	@echo "  metrics: http://127.0.0.1:9464/metrics   offline demo: $(PY) -m callgate demo"
	$(PY) -m callgate serve --listen 127.0.0.1:50051 --data-dir data --seed examples/acme.json \
		--seed-credit 10.00 --log-format text

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine server loadtest tests

test: build lint
	$(PY) -m pytest -q

bench: build
	$(PY) -m loadtest.core_bench

clean:
	rm -rf build engine/_core.c engine/_core*.so callgate/v1/*_pb2*
