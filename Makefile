# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY310 ?= $(shell command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys' 2>/dev/null && echo python3.10 || ls /root/.pyenv/versions/3.10*/bin/python3.10 2>/dev/null | head -n1)
VENV := .venv
PY := $(VENV)/bin/python
RUN ?= runs/default
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

setup: $(STAMP)
	@test -f $(FASHION) || test -f data/fashion-mnist/train-images-idx3-ubyte.gz || \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q dataset-fashion-mnist || \
	      { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	  else \
	    echo "error: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian), or put its four idx .gz files under data/fashion-mnist (or pass --data-dir DIR with DIR/fashion-mnist)" >&2; exit 1; \
	  fi

$(STAMP): pyproject.toml
	@test -n "$(PY310)" || { echo "error: python3.10 not found (lava-nc 0.10.0 needs Python 3.10)"; exit 1; }
	test -x $(PY) || $(PY310) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: setup
	$(PY) -m train.distill --run $(RUN)
	$(PY) -m export.to_nir --run $(RUN)
	$(PY) -m export.to_onnx --run $(RUN)
	$(PY) -m deploy.verify --run $(RUN)
	$(PY) -m hwmodels.energy --run $(RUN)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
