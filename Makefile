# Two commands on a fresh machine: `make demo` (simulation report with plots) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo
DEMO_TRACE := simulations/data/azure_conv_2023.csv

.PHONY: demo test bench clean

$(BIN)/vllm-autoscaler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/vllm-autoscaler
	$(BIN)/vllm-autoscaler simulate --trace $(DEMO_TRACE) --policy controller --out $(OUT)
	$(BIN)/vllm-autoscaler compare --trace $(DEMO_TRACE) --out $(OUT)/compare \
		--policies controller,hpa,hpa:target_average=10,modal-only,static-peak,oracle
	@echo "report: $(OUT)/report.md, comparison: $(OUT)/compare/compare.png"

test: $(BIN)/vllm-autoscaler
	bash tests/setup_real_parts.sh
	$(BIN)/python -m pytest

bench: $(BIN)/vllm-autoscaler
	for b in tests/benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-vllm out .cache
