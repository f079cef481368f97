# fedrad: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedrad-installed
export FLWR_HOME := $(CURDIR)/.flwr
SITES ?= 4
ROUNDS ?= 5
IMAGE_SIZE ?= 64

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m server.demo --sites $(SITES) --rounds $(ROUNDS) --image-size $(IMAGE_SIZE)

# The tests start dozens of Python processes (Flower starts one per message); with the
# environment's PYTHONDONTWRITEBYTECODE set, each one recompiles fedrad's modules.
# Two workers, one test file each at a time: the federation tests mostly wait on Flower
# (its SuperNode polls every 3 s), so the rest of the suite runs beside them.
test: install
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf runs .fedrad-cache .flwr
