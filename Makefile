# The two commands of the README. Both bootstrap what they need (scripts/bootstrap.sh is
# idempotent and takes seconds once the environment exists).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test bootstrap

bootstrap:
	@bash scripts/bootstrap.sh

## Run the node on lion-nano with a synthetic camera and ask it real questions.
demo: bootstrap
	@$(VENV)/bin/python -m lion_ros.ros.demo

## Run the test suite (CPU only; GPU tests skip with a reason). No test collected is a failure.
test: bootstrap
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
