# The README's two commands are `make demo` and `make test`; everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes with pyproject.toml, so a dependency change reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
REPO   ?= model_repository

.PHONY: install install-tools demo test test-fast export serve proto lint bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[cpu,export,dev,bench]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## System tools the deployment checks need (promtool, prometheus); idempotent.
install-tools:
	bash scripts/install-check-tools.sh

## Export the small families (reusing an up-to-date repository), serve them, answer one request per task.
demo: install
	$(BIN)/python -m clients.demo --model-repository $(REPO) --out demo_output

## The whole test suite, as CI runs it.
test: install install-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile

## Everything but the tests marked slow.
test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

## Export the small families into $(REPO) and stamp it, so that `make demo` reuses it.
export: install
	$(BIN)/python -m clients.demo_repository --model-repository $(REPO) --force

serve: install
	$(BIN)/ninefold serve --model-repository $(REPO)

proto: install
	$(BIN)/python -m protos.generate

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy contract export serving clients

bench: install
	$(BIN)/python -m benchmarks.suite --out bench_results $(BENCH_ARGS)

## Soak and overload on the small families (not part of `make test`; loopback; the load itself <= 10 min):
## mixed tasks at 80% of measured saturation, then at 2x; docs/RELIABILITY.md explains the figures.
soak: install
	$(BIN)/python -m clients.demo_repository --model-repository $(REPO)
	$(BIN)/python -m benchmarks.soak --model-repository $(REPO) --out soak_results $(SOAK_ARGS)

clean:
	rm -rf $(REPO) demo_output bench_results soak_results .pytest_cache
