# `make demo` runs the whole product on one CPU: SynthAV data, an OmniSIFT selector trained in front of the
# frozen tiny-omni (checkpoints/tiny-omni) with the Lightning CLI, exported, then `sift eval` of every method.
# `make test` runs the test suite. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sift-installed

DEMO ?= runs/demo
DEMO_TEST_CLIPS ?= 100
DEMO_TRAIN_CLIPS ?= 300

.PHONY: install demo demo-eval test clean

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
	$(PY) -m sift synthav $(DEMO)/synthav --train $(DEMO_TRAIN_CLIPS) --test $(DEMO_TEST_CLIPS)
	rm -rf $(DEMO)/checkpoints
	$(PY) -m train fit --config configs/demo.yaml
	$(PY) -m train export $(DEMO)/checkpoints/last.ckpt checkpoints/demo-selector
	$(MAKE) --no-print-directory demo-eval SELECTOR=checkpoints/demo-selector

# `sift eval` alone, with the committed pre-trained selector unless SELECTOR=... is given.
SELECTOR ?= checkpoints/omnisift-synthav
demo-eval: $(STAMP)
	$(PY) -m sift synthav $(DEMO)/synthav --test $(DEMO_TEST_CLIPS)
	$(PY) -m sift eval --manifest $(DEMO)/synthav/test.jsonl --model checkpoints/tiny-omni \
		--selector $(SELECTOR) --methods none random omnizip stvp dycoke omniselect omnisift \
		--retentions 0.25 0.35 --max-new-tokens 2 --out $(DEMO)/eval

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
