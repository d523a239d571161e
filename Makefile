# filterkit: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both set up what they need first (a virtualenv in .venv with filterkit installed in it).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FILTERKIT := $(VENV)/bin/filterkit
DEMO := build/demo/policy-demo
DEMO_IMAGE ?= registry.local:5000/filters/policy-demo:0.1.0

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "filterkit needs Python >= 3.10 (found $$($(PYTHON) --version))"; exit 2; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "cannot create a virtualenv: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 2; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(VENV)/.installed

# The main job on the embedded default: an AssemblyScript policy filter scaffolded by `filterkit new`
# (kept if it exists already, so your edits survive), built, tested on the in-process host and on a
# real local Envoy, and shipped as an Istio WasmPlugin manifest.
demo: setup
	@test -f $(DEMO)/filterkit.yaml || $(FILTERKIT) new policy-demo --dir $(DEMO)
	$(FILTERKIT) build $(DEMO)
	$(FILTERKIT) test $(DEMO) --target all --junit $(DEMO)/build/junit.xml
	$(FILTERKIT) manifest istio $(DEMO) --image $(DEMO_IMAGE)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build .pytest_cache
