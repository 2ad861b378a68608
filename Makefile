# Quick start:  make run   (set up and run regd on 127.0.0.1:5000, data in ./data)
#               make test  (set up and run the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.regd-installed

.PHONY: run test venv bench bench-search clean image fuzz

venv: $(STAMP)

# Editable install in "compat" mode puts the checkout on sys.path, which is
# how twistd finds twisted/plugins/regd_plugin.py.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= regd --config etc/regd-dev.yml

# Two worker processes (pytest-xdist), each taking a whole test module at a time: a module's
# fixtures (the installed package, the image's compose projects) never meet another process's.
test: $(STAMP)
	$(BIN)/python -m pytest -v -n 2 --dist loadfile --durations=15 tests

# The container image (image/build.py; README "Container image"): built from Debian
# packages and this checkout, cached in build/image by a hash of the inputs, then
# loaded into the docker engine that DOCKER_HOST names.
image:
	tar=$$(python3 image/build.py --output build/image) && docker load --input "$$tar" && echo "image tarball: $$tar"

# A longer fuzzing run than CI's (tests/fuzz); REGD_FUZZ_EXAMPLES=N for more, REGD_FUZZ_RANDOM=1 for new cases.
fuzz: $(STAMP)
	REGD_FUZZ_EXAMPLES=$${REGD_FUZZ_EXAMPLES:-20000} REGD_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/fuzz

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-search: $(STAMP)
	$(BIN)/python bench/run.py --search-only

clean:
	rm -rf $(VENV) data _trial_temp* .pytest_cache
