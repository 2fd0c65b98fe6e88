# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Both create .venv, install everything (system packages too, when missing and run as root),
# then run the demo or the test suite.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fixed: pipelines/demo.yaml, laclip.yaml and recaption.yaml name demo/pool, demo/filter, ...
override DEMO_DIR := demo
SYSTEM_PACKAGES := fonts-dejavu-core wordnet-base chromium protobuf-compiler libprotobuf-dev

.PHONY: install system-deps demo demo-laclip demo-recaption test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/base.txt requirements/constraints.txt
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/base.txt
	$(BIN)/pip install -q --no-deps img2dataset==1.47.0
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

# Debian packages: installed only when missing, and only when we may (root or passwordless sudo).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "please install:$$missing (apt-get install$$missing)"; exit 0; fi; \
	  echo "installing system packages:$$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/curate demo-data $(DEMO_DIR)/pool
	$(BIN)/curate demo-data $(DEMO_DIR)/trusted --trusted --seed 1 --shards 2 --per-shard 256
	$(BIN)/curate train-filter --data '$(DEMO_DIR)/trusted/*.tar' --out $(DEMO_DIR)/filter --epochs 15
	$(BIN)/curate run pipelines/demo.yaml --out $(DEMO_DIR)/run
	$(BIN)/curate write $(DEMO_DIR)/run
	$(BIN)/curate query $(DEMO_DIR)/run "select reason, count(*) as samples from manifest group by 1 order by 2 desc"
	@echo
	@echo "CLIP drops by sample kind (the generator's ground truth):"
	@$(BIN)/python -c "import duckdb; duckdb.sql(\"select g.kind, count(*) as dropped_by_clip from '$(DEMO_DIR)/run/selections/demo/manifest/*.parquet' m join '$(DEMO_DIR)/pool/ground_truth.parquet' g using (uid) where m.reason = 'clip_score_too_low' group by 1 order by 2 desc\").show()"
	@echo "The demo run is in $(DEMO_DIR)/run: store/ (every score, reused by later runs) and"
	@echo "selections/demo/: manifest/ (one row per input sample), output/*.tar (curated"
	@echo "shards), catalog.duckdb (views). Try:"
	@echo "  $(BIN)/curate stats $(DEMO_DIR)/run"
	@echo "  $(BIN)/curate query $(DEMO_DIR)/run \"select * from drops limit 10\""

# LaCLIP caption rewrites on the demo pool: trains the tiny demo rewriter LLM (3 minutes on CPU),
# then runs pipelines/laclip.yaml (two rewrites per kept caption, txt_rw0/txt_rw1 members).
demo-laclip: $(STAMP)
	@test -d $(DEMO_DIR)/pool || $(BIN)/curate demo-data $(DEMO_DIR)/pool
	@test -f $(DEMO_DIR)/rewriter/config.json || \
	  $(BIN)/curate demo-rewriter $(DEMO_DIR)/rewriter --train-seconds 180
	$(BIN)/curate run pipelines/laclip.yaml --out $(DEMO_DIR)/laclip
	$(BIN)/curate query $(DEMO_DIR)/laclip "select m.caption, r.rewrite, r.status, coalesce(r.text, r.reason) as rewrite_or_reason from rewrites r join manifest m using (uid) order by m.shard, m.index, r.rewrite limit 12"

# Synthetic captions from the image (ALIP-style) on the demo pool: trains the demo's CLIP filter
# network (as `make demo`) and the tiny demo captioner (a BLIP, 200 steps), then runs
# pipelines/recaption.yaml (two captions per kept image, txt_syn0/txt_syn1 members, ALIP's
# signals from the stored CLIP embeddings); see docs/recaption.md.
demo-recaption: $(STAMP)
	@test -d $(DEMO_DIR)/pool || $(BIN)/curate demo-data $(DEMO_DIR)/pool
	@test -f $(DEMO_DIR)/filter/open_clip_config.json || { \
	  $(BIN)/curate demo-data $(DEMO_DIR)/trusted --trusted --seed 1 --shards 2 --per-shard 256 && \
	  $(BIN)/curate train-filter --data '$(DEMO_DIR)/trusted/*.tar' --out $(DEMO_DIR)/filter --epochs 15; }
	@test -f $(DEMO_DIR)/captioner/config.json || \
	  $(BIN)/python -m curate.demo.captioner $(DEMO_DIR)/captioner --steps 200
	$(BIN)/curate run pipelines/recaption.yaml --out $(DEMO_DIR)/recaption
	@$(BIN)/python -c "import duckdb; d = '$(DEMO_DIR)/recaption/selections/recaption/'; duckdb.sql(f\"select m.caption as original, r.syn, coalesce(r.text, r.status || ': ' || r.reason) as synthetic_caption, round(r.image_sim, 3) as image_sim, round(r.text_sim, 3) as text_sim from '{d}recaptions.parquet' r join '{d}manifest/*.parquet' m using (uid) order by m.shard, m.index, r.syn limit 12\").show(max_width=250)"

lint: $(STAMP)
	$(BIN)/ruff check curate tests benchmarks

# Two xdist workers, whole files to a worker (module fixtures are built once); the session's
# artefacts (demo pool, filter network, demo runs, tiny LLMs) are built once for both
# (tests/conftest.py). Ends with the 15 slowest items, the slowest shared fixtures and any file
# over its budget (tests/README.md). Files start in the order tests/budget.py gives (xdist would
# otherwise start the files with the most tests first). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) --durations=15

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache .ruff_cache
