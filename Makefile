# The two commands of the README, and the pieces they are made of.
#   make devnet   set up, then run the main job: `deedmesh devnet` on its embedded defaults
#   make test     set up, then run every check and the whole test suite
.PHONY: devnet test setup lint artifacts-check pytest bench compile clean

VENV := .venv/bin

devnet: setup
	@scripts/engine.sh > /dev/null || echo "no container engine could be started: the devnet says what it cannot run"
	$(VENV)/deedmesh devnet

test: setup lint pytest

setup:
	@scripts/setup.sh

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports

pytest:
	$(VENV)/python -m pytest

compile: setup
	$(VENV)/python scripts/compile_contracts.py

bench: setup
	$(VENV)/python scripts/bench_gas.py

clean:
	rm -rf .venv contracts/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
