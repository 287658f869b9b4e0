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

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

run: build
	$(PY) -m engine.demo examples/acme.json

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine loadtest tests

test: build lint
	$(PY) -m pytest -q

bench: build
	$(PY) -m loadtest.core_bench

clean:
	rm -rf build engine/_core.c engine/_core*.so
