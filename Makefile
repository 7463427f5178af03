# Every target sets the environment up first when needed (scripts/setup.sh, about 2 min from nothing).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentqat-setup

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default model and corpus: a short evolution whose strategies a local LLM
# (SmolLM2 on a vLLM server the tool starts and stops) proposes under JSON-schema-constrained decoding,
# recorded in runs/demo/. Running it again resumes the recorded run instead of replaying it.
demo: $(STAMP)
	@if [ -f runs/demo/manifest.json ]; then $(BIN)/agentqat evolve --resume runs/demo; \
	else $(BIN)/agentqat evolve --generator llm --population 4 --generations 2 --run demo; fi

# Everything CI runs, slow integration tests included.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop while developing: skips the integration tests on the real model and vLLM server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
