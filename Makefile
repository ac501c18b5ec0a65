# Two commands for a fresh machine (Python 3.11 + pip):   make demo   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel on this project's machines; a plain "torch" requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/cmhash demo

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_map.py

clean:
	rm -rf $(VENV) .pytest_cache
