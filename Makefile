# `make demo` runs sift on the embedded default (tiny offline Qwen2.5-Omni + a bundled/synthesized clip);
# `make test` runs the test suite. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sift-installed

.PHONY: install demo test clean

# deepspeed ships as an sdist whose build needs torch: build it against the torch installed first
# (DS_BUILD_OPS=0: its ops are JIT-compiled on GPU nodes when used), then add the train extra.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
	$(PY) -m pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sift demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
