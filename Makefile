# Two commands do all the set-up on a fresh machine:
#   make demo   -- the main job
#   make test   -- the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean clean-cache

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[torch,test,plot,onnx,demo]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m normkit demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m normkit bench --out bench-out

# Numba's cache does not notice when a kernel that another file calls changes:
# after editing normkit/kernels, drop the compiled code.
clean-cache:
	find normkit -name __pycache__ -prune -exec rm -rf {} +

clean: clean-cache
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
