# Every target sets the environment up first when needed (scripts/setup.sh, about 2 min from nothing).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentqat-setup

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job there is today on the embedded default model and corpus: a quick baseline tournament
# (screening stage, 4 and 3 bits, RTN / GPTQ / AWQ / HQQ / NF4) on Ray workers, recorded in runs/demo/.
# Running it again resumes the recorded run instead of replaying it.
demo: $(STAMP)
	$(BIN)/agentqat info
	$(BIN)/agentqat baseline --stage screen --bits 4,3 --calibration 16 --methods rtn,gptq,awq,hqq,nf4 --run demo

# Everything CI runs, slow integration tests included.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop while developing: skips the integration tests on the real model and vLLM server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
