# Every target sets the environment up first when needed (scripts/setup.sh, about 2 min from nothing).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentqat-setup

.PHONY: setup demo lint test test-fast clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# A newcomer's first result on the embedded model and corpus: a short evolution on the small study arena
# (fewer tokens per match, a 4.25-bit budget that forces layers to differ) whose strategies a local LLM
# (SmolLM2 on a vLLM server the tool starts and stops) proposes under JSON-schema-constrained decoding,
# recorded in runs/demo/. Running it again shows the finished run in seconds (starting nothing) and prints
# the command that extends it; a stopped run resumes where it was.
demo: $(STAMP)
	@if [ -f runs/demo/manifest.json ]; then $(BIN)/agentqat evolve --resume runs/demo; \
	else $(BIN)/agentqat evolve --arena smollm2-study --generator llm --population 6 --generations 2 --run demo; fi

# Line length, import order, unused and undefined names ([tool.ruff] in pyproject.toml); `ruff check --fix .` mends most.
lint: $(STAMP)
	$(BIN)/ruff check .

# Everything CI runs: the linter, then every test, slow integration tests included.
test: lint
	$(BIN)/python -m pytest -q

# The quick loop while developing: skips the integration tests on the real model and vLLM server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
