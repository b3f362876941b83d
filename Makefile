# `make demo` runs the whole product on one CPU: SynthAV v2 data, an OmniSIFT selector trained in front of the
# frozen tiny-omni-v2 (checkpoints/tiny-omni-v2) with the Lightning CLI, exported, then `sift eval` of every method.
# `make test` runs the test suite. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sift-installed

DEMO ?= runs/demo
DEMO_TEST_CLIPS ?= 100
DEMO_TRAIN_CLIPS ?= 300

.PHONY: install demo demo-eval test test-fast test-lowest test-lmms test-newest constraints clean

# Every install goes through constraints.txt, the exact stack the suite was run on (see its header to refresh).
# deepspeed ships as an sdist whose build needs torch: build it against the torch installed first
# (DS_BUILD_OPS=0: its ops are JIT-compiled on GPU nodes when used), then add the train extra.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e ".[dev]"
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed
	$(PIP) -e ".[dev,train]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sift synthav $(DEMO)/synthav --version 2 --train $(DEMO_TRAIN_CLIPS) --test $(DEMO_TEST_CLIPS)
	rm -rf $(DEMO)/checkpoints
	$(PY) -m train fit --config configs/demo.yaml
	$(PY) -m train export $(DEMO)/checkpoints/last.ckpt checkpoints/demo-selector
	$(MAKE) --no-print-directory demo-eval SELECTOR=checkpoints/demo-selector

# `sift eval` alone, with the committed pre-trained selector unless SELECTOR=... is given.
SELECTOR ?= checkpoints/omnisift-synthav-v2
DEMO_RETENTIONS ?= 0.10 0.25
demo-eval: $(STAMP)
	$(PY) -m sift synthav $(DEMO)/synthav --version 2 --test $(DEMO_TEST_CLIPS)
	$(PY) -m sift eval --manifest $(DEMO)/synthav/test.jsonl --model checkpoints/tiny-omni-v2 \
		--selector $(SELECTOR) --methods none random omnizip stvp dycoke omniselect omnisift \
		--retentions $(DEMO_RETENTIONS) --max-new-tokens 2 --out $(DEMO)/eval --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# The quick loop for a change: everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The plug-in, end-to-end and internals tests on the lowest transformers pyproject.toml allows, the rest of
# the stack pinned. transformers goes into a side folder put first on PYTHONPATH; the venv is untouched.
STACKS := .ci-stack
TF_LOWEST = $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
LOWEST_TESTS ?= tests/core/test_hf_internals.py tests/core/test_plugin.py tests/core/test_end_to_end.py tests/core/test_methods.py \
	tests/core/test_models.py tests/core/test_qwen3_deepstack.py tests/core/test_qwen3_layout.py tests/core/test_qwen3_plugin.py \
	tests/core/test_qwen3_end_to_end.py \
	tests/testbed/test_tiny_qwen3.py tests/apps/test_eval_bench.py
test-lowest: $(STAMP)
	rm -rf $(STACKS)/lowest && mkdir -p $(STACKS)
	grep -v '^transformers==' constraints.txt > $(STACKS)/constraints-lowest.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --target $(STACKS)/lowest \
		-c $(STACKS)/constraints-lowest.txt "transformers==$(TF_LOWEST)"
	PYTHONPATH=$(STACKS)/lowest $(PY) -m pytest -q $(LOWEST_TESTS)

# The lmms-eval plug-in (tests/apps/test_lmms_eval.py) with lmms-eval and the modules it imports, from
# constraints-lmms.txt (see its header), in a side folder put first on PYTHONPATH; the venv is untouched.
test-lmms: $(STAMP)
	rm -rf $(STACKS)/lmms && mkdir -p $(STACKS)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $(STACKS)/lmms -r constraints-lmms.txt
	PYTHONPATH=$(CURDIR)/$(STACKS)/lmms $(PY) -m pytest -q -k lmms tests/apps

# The whole suite on the newest released transformers (and the newest of what it pulls in), to see the next
# break before a user does. .ci/run reports the outcome without failing on it.
test-newest: $(STAMP)
	rm -rf $(STACKS)/newest && mkdir -p $(STACKS)
	$(PY) -m pip install --quiet --disable-pip-version-check --target $(STACKS)/newest --upgrade transformers
	@newest=$$(PYTHONPATH=$(STACKS)/newest $(PY) -c "import transformers; print(transformers.__version__)"); \
	pinned=$$($(PY) -c "import transformers; print(transformers.__version__)"); \
	if [ "$$newest" = "$$pinned" ]; then echo "newest released transformers $$newest is the pinned one: already tested"; \
	else PYTHONPATH=$(STACKS)/newest $(PY) -m pytest -q -p no:cacheprovider; fi

# Re-resolve the newest versions pyproject.toml allows in a scratch venv and rewrite constraints.txt.
constraints:
	rm -rf $(STACKS)/refresh
	python3 -m venv $(STACKS)/refresh
	$(STACKS)/refresh/bin/pip install --quiet --upgrade pip setuptools wheel
	$(STACKS)/refresh/bin/pip install --quiet -e ".[dev]"
	DS_BUILD_OPS=0 $(STACKS)/refresh/bin/pip install --quiet --no-build-isolation deepspeed
	$(STACKS)/refresh/bin/pip install --quiet -e ".[dev,train]"
	sed -n '/^#/p' constraints.txt > $(STACKS)/constraints.new
	$(STACKS)/refresh/bin/pip freeze --all --exclude-editable | grep -v '^sift-omni' >> $(STACKS)/constraints.new
	mv $(STACKS)/constraints.new constraints.txt
	rm -rf $(STACKS)/refresh
	@echo "constraints.txt rewritten; now run: make clean test"

clean:
	rm -rf $(VENV) $(STACKS) .pytest_cache .hypothesis
