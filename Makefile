# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv once and are safe to run again.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23" -q
	# torch first, pinned: a CPU build where one is on the pip path, never the CUDA wheels.
	$(PY) -m pip install -c constraints.txt torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e ".[face,train,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/talking-head demo --output out/demo.mp4

test: $(STAMP)
	$(PY) -m pytest -q tests || test $$? -eq 5

clean:
	rm -rf $(VENV) out
