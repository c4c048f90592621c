# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv once and are safe to run again.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo app test clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23" -q
	# torch first, pinned: a CPU build where one is on the pip path, never the CUDA wheels.
	$(PY) -m pip install -c constraints.txt torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e ".[face,train,test,app]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/talking-head demo --output out/demo.mp4

# The web page: http://127.0.0.1:7860 (talking-head app --help for the options).
app: $(STAMP)
	$(VENV)/bin/talking-head app

# The browser test (tests/test_app_browser.py) drives Debian's headless Chromium: installed first when it is
# missing and apt-get is usable (root); otherwise, or when that fails, the test skips. It never fails `make test`.
test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	      >/dev/null 2>&1 || echo "could not install chromium; the browser test will skip"; \
	  else echo "no chromium and no root apt-get: the browser test will skip"; fi; \
	fi
	$(PY) -m pytest -q tests || test $$? -eq 5

clean:
	rm -rf $(VENV) out
