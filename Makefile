# MS MRI dashboard — set-up, run and test. Everything runs from the virtual environment in .venv.
PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STUDY   ?= data/demo
PORT    ?= 8501
PYTEST_ARGS ?=

.PHONY: run test demo bench lint typecheck browser-deps clean-venv help

help:
	@echo "make run    - create .venv, install, build the demo study if missing, start the app"
	@echo "make test   - run the test suite (installs dev tools and chromium for browser tests)"
	@echo "make demo   - (re)build the demo study in $(STUDY)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make lint   - ruff; make typecheck - mypy --strict on ms_core"

# The venv is rebuilt when a requirements file changes.
$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(STUDY)/participants.tsv: | $(VENV)/.installed
	$(PY) -m ms_core -v demo --out $(STUDY)

demo: $(VENV)/.installed
	$(PY) -m ms_core -v demo --out $(STUDY)

run: $(VENV)/.installed $(STUDY)/participants.tsv
	@echo "Open http://127.0.0.1:$(PORT) in your browser (Ctrl+C to stop)."
	MS_DASH_STUDY=$(STUDY) $(PY) -m streamlit run app.py --server.address 127.0.0.1 \
		--server.port $(PORT) --server.headless true

# Debian's chromium drives the browser tests (Playwright cannot download its own browser here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get install -y -q chromium >/dev/null 2>&1 || \
			 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
			|| echo "chromium could not be installed: browser tests will be skipped"; \
		else echo "chromium not found and cannot be installed: browser tests will be skipped"; fi; }

# Two pytest workers (the CI machine has 2 cores); a test file stays on one worker, in order.
# Exit status 5 (no test collected) means the suite is broken: say so and fail.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-dev browser-deps
	@status=0; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no test: the suite is broken" >&2; exit 1; fi; \
	exit $$status

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy --strict ms_core

bench: $(VENV)/.installed $(STUDY)/participants.tsv
	@mkdir -p bench/results
	$(PY) bench/demo_build.py
	$(PY) bench/segment_speed.py --method network
	$(PY) bench/segment_speed.py --method baseline
	$(PY) bench/prognosis_speed.py
	$(PY) bench/batch_scaling.py
	$(PY) bench/stage_timings.py
	$(PY) bench/ort_vs_torch.py
	$(PY) bench/overlap_tta.py
	$(PY) bench/overlap_choice.py
	$(PY) bench/operating_points.py
	$(PY) bench/app_responsiveness.py
	$(PY) bench/demo_autorun.py
	$(PY) bench/harmonisation_check.py

clean-venv:
	rm -rf $(VENV)

# Longer fuzz campaign of the NIfTI readers (docs/reliability.md): hypothesis with FUZZ_EXAMPLES
# derandomised examples (counts by class in bench/results/fuzz.json), then atheris if installed.
FUZZ_EXAMPLES ?= 5000
ATHERIS_RUNS ?= 20000
.PHONY: fuzz
fuzz: $(VENV)/.installed-dev
	@mkdir -p bench/results
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_REPORT=bench/results/fuzz.json \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py
	@if $(PY) -c "import atheris" 2>/dev/null; then \
		PYTHONPATH=. $(PY) tests/test_fuzz.py -runs=$(ATHERIS_RUNS) -max_len=8192; \
	else echo "atheris not installed (pip install atheris): coverage-guided run skipped"; fi
