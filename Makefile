# The two commands of the README: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# The test suite runs its own Kafka and PostgreSQL on other ports, beside any `make run` stack.
# Override the three ports and the folder to run a second checkout's tests beside this one's.
export BLONET_TEST_STACK_DIR ?= $(CURDIR)/var/test-stack
export BLONET_TEST_KAFKA_PORT ?= 19092
export BLONET_TEST_CONTROLLER_PORT ?= 19093
export BLONET_TEST_PG_PORT ?= 15433
TEST_STACK := BLONET_STACK_DIR=$(BLONET_TEST_STACK_DIR) BLONET_KAFKA_PORT=$(BLONET_TEST_KAFKA_PORT) \
	BLONET_KAFKA_CONTROLLER_PORT=$(BLONET_TEST_CONTROLLER_PORT) BLONET_PG_PORT=$(BLONET_TEST_PG_PORT)

.PHONY: install setup-run setup-test run test stop bench faults soak check-compose

setup-run:  ## the Debian packages `make run` needs (installed as root, else named with the command)
	@deploy/setup.sh run

setup-test:  ## those and the ones the tests need
	@deploy/setup.sh test

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 not found (need Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: setup-run install  ## start Kafka, PostgreSQL, the four services and the demo; Ctrl-C stops it all
	@deploy/run.sh $(RUN_ARGS)

test: setup-test install  ## run every test on the test stack; stops the stack it started (KEEP_STACK=1 keeps it)
	@$(TEST_STACK) KEEP_STACK=$(KEEP_STACK) deploy/test.sh $(PYTEST_ARGS)

stop:  ## stop anything `make run` or `make test` left running, and delete a database kept outside the checkout
	-deploy/stack.sh clean
	-$(TEST_STACK) deploy/stack.sh clean

bench: setup-run install  ## the throughput/latency benchmark against a running `make run` stack
	$(BIN)/python -m bench.pipeline

faults: setup-run install  ## kill parts of BLOnet under load on a private stack; FAULTS_ARGS="--brokers 3 --scenarios leader-kill"
	$(BIN)/python -m bench.faults $(FAULTS_ARGS)

soak: setup-run install  ## a long modest load on a private stack, memory/CPU/lag per process; SOAK_ARGS="--minutes 10 --scenarios none"
	$(BIN)/python -m bench.soak $(SOAK_ARGS)
