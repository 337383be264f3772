# Two commands set up and prove everything on a fresh machine:
#   make demo   install into .venv and run the main job on the built-in default
#   make test   install into .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/morph run configs/demo.yaml -o runs/demo --overwrite

# Two test processes, one per core of the 2-core CI machine; a test module stays
# in one process, so its module fixtures are built once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
