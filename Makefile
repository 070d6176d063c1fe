# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs prunelab, executes every notebook headlessly (cpu scale from
#               cached results where they exist, ci scale otherwise) and writes figures to out/
#   make test   same environment; runs every test, notebooks included (nbval, ci scale)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.prunelab-installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1
WORKERS ?= 2

.PHONY: demo test venv bench lab clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,notebooks]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	PRUNELAB_SCALE=ci OMP_NUM_THREADS=1 $(PY) -m pytest -q -rs --durations=10 -n $(WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=900 tests notebooks

demo: $(STAMP)
	$(PY) -m prunelab.demo

# JupyterLab on the notebooks in the project's environment (not one of the two set-up commands)
lab: $(STAMP)
	cd notebooks && $(abspath $(PY)) -m jupyter lab

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/compaction_speedup.py
	$(PY) bench/method_overhead.py
	$(PY) bench/manidp_step_profile.py
	$(PY) bench/dynamic_inference.py --random-init
	$(PY) bench/latency_budget.py
	$(PY) bench/paper_throughput.py

clean-venv:
	rm -rf $(VENV)
