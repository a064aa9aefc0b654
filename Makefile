# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := demo
# CPU machines: install the CPU build of torch first, or pip pulls several GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench env clean

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
test: env
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests"; fi; exit $$code

# The CPU benchmarks, each printing its table (a few minutes on 2 cores).
# The GPU one is bench/gpu_throughput.py, run on a GPU machine.
bench: env
	$(BIN)/python bench/image_tokens.py
	$(BIN)/python bench/image_tokens.py --candidates 20
	$(BIN)/python bench/prepare_speed.py
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/scheduling.py
	$(BIN)/python bench/sizing.py

clean:
	rm -rf $(DEMO) .pytest_cache
