# The two commands a new user needs: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
TORCH  := 2.13.0
MODEL  := data/models/smollm2-135m-instruct/config.json
PORT   ?= 8000
ADMIN_KEY_FILE := data/runtime/admin-key
REDIS_PASSWORD_FILE := data/runtime/redis-password
export DOMAINLLM_PORT ?= $(PORT)

.PHONY: train-samples setup lock model browser run test test-external-redis test-unit test-integration lint format bench gpu-check clean

setup: $(STAMP)

# Exactly the versions and files of the lock, each checked against its SHA-256 (pip and setuptools
# too), then the project itself with nothing more. torch is the CPU wheel on this disk
# (torch==$(TORCH)+cpu, pinned by that file's hash): a bare requirement would pull a CUDA build.
# pip compiles every module up front (76 of the install's 136 s here): keep it. With --no-compile the suite
# took 913 s instead of ~630: PYTHONDONTWRITEBYTECODE=1 on these machines, so every process compiled
# torch and the rest again from source.
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# After a change to the dependencies in pyproject.toml: resolve them again (torch held at the disk's
# CPU wheel) and hash every file of every pin, the base of the next `make setup` (a few minutes).
# The base-model wheel is pinned apart, in core/model_store.py (it is data, not a package we import).
lock: | $(STAMP)
	printf 'torch==$(TORCH)\n' > $(VENV)/lock-constraints.txt
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --extra dev --strip-extras --no-emit-index-url \
		--constraint $(VENV)/lock-constraints.txt --output-file $(LOCK) pyproject.toml

model: $(MODEL)

$(MODEL): | $(STAMP)
	$(BIN)/domainllm prepare-model

# the demo's news: the project's own sample feed, polled by the worker (any RSS/Atom URLs work)
run: export DOMAINLLM_SENTIMENT_FEEDS ?= ["data/samples/news/feed.xml"]
run: setup model
	@mkdir -p data/runtime
	@# a demo admin key, made once and kept in an ignored file (DOMAINLLM_ADMIN_KEY in the environment wins)
	@[ -s $(ADMIN_KEY_FILE) ] || $(BIN)/python -c "import secrets; print('adm-' + secrets.token_urlsafe(24))" > $(ADMIN_KEY_FILE)
	@# and the embedded Redis's password, the same way (every process and the CLI read it from that file)
	@[ -s $(REDIS_PASSWORD_FILE) ] || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(24))" > $(REDIS_PASSWORD_FILE)
	@chmod 600 $(ADMIN_KEY_FILE) $(REDIS_PASSWORD_FILE)
	@echo "domainllm: starting redis + API; open http://127.0.0.1:$(PORT) (API docs at /docs)"
	@echo "domainllm: tenant 'default': admin key $${DOMAINLLM_ADMIN_KEY:-$$(cat $(ADMIN_KEY_FILE))} (in $(ADMIN_KEY_FILE); send it as 'Authorization: Bearer <key>')"
	@echo "domainllm: tenant 'default': demo widget key $$($(BIN)/python -c "from apps.support.settings import SupportSettings as S; print((S().public_keys or ['(none: DOMAINLLM_SUPPORT_PUBLIC_KEYS is empty)'])[0])") (the demo pages use it)"
	@echo "domainllm: another tenant: .venv/bin/domainllm tenants create acme, then .venv/bin/domainllm keys create --tenant acme --scope widget (README, 'Tenants and keys')"
	DOMAINLLM_ADMIN_KEY="$${DOMAINLLM_ADMIN_KEY:-$$(cat $(ADMIN_KEY_FILE))}" $(BIN)/honcho start

# each domain's adapter trained on the repo's sample file (docs/data-formats.md) for the default tenant:
# @v1 serves at once, @v2 goes through the gate (promoted or refused, with the report). On 2 cores recommend's two
# rounds took 20 min (a gate scores 100 held-out and 60 guard users through two models); `--domain` picks one
train-samples: setup model
	$(BIN)/domainllm train-samples --tenant $${TENANT:-default}

# Two processes share the suite (pytest-xdist, each test file whole in one of them: a file's fixtures stay
# in one process). Then the schemathesis fuzz, which xdist cannot share (its per-operation tests collapse
# into one per function that sends a fraction of the cases): its two functions in two processes.
FUZZ := tests/integration/test_schemathesis.py
test: setup model browser
	$(BIN)/python -m pytest -q -m "not long" -n 2 --dist loadfile --durations=25 --ignore=$(FUZZ)
	@$(BIN)/python -m pytest -q -m "not long" -p no:xdist --durations=3 --basetemp=$(VENV)/fuzz-model \
		-k model_operation $(FUZZ) > $(VENV)/fuzz-model.log 2>&1 & model=$$!; \
	$(BIN)/python -m pytest -q -m "not long" -p no:xdist --durations=3 -k "not model_operation" $(FUZZ); rest=$$?; \
	wait $$model; model_rc=$$?; echo "---- $(FUZZ) -k model_operation ----"; cat $(VENV)/fuzz-model.log; \
	[ $$rest -eq 0 ] && [ $$model_rc -eq 0 ]

# the e2e tests drive Debian's Chromium through Playwright (never a downloaded browser); they skip without it
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing Debian chromium for the e2e tests"; \
		DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get -qq update && \
		DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get -y -qq install --no-install-recommends chromium chromium-driver >/tmp/domainllm-browser.log 2>&1 \
		|| echo "browser: apt-get could not install chromium (see /tmp/domainllm-browser.log); the e2e tests will be skipped"; \
	else \
		echo "browser: no /usr/bin/chromium and no apt-get; the e2e tests will be skipped"; \
	fi

# the suite against a standalone redis-server (Debian's package) with a password and AOF, not the embedded
# one (deploy/redis/test-external.sh); ARGS narrows it: make test-external-redis ARGS="-q tests/unit/test_tenants.py"
test-external-redis: setup model browser
	deploy/redis/test-external.sh $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest -q -m unit

test-integration: setup model
	$(BIN)/python -m pytest -q -m integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core domains apps domainllm finetune workers

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# every benchmark, ours against its baseline in one process; each writes bench/results/*.json (about an hour)
bench: setup model
	$(BIN)/python -m pytest -q -m long
	DOMAINLLM_FUZZ_EXAMPLES=50 $(BIN)/python -m pytest -q -p no:xdist $(FUZZ)
	$(BIN)/python bench/core_bench.py
	$(BIN)/python bench/support_bench.py
	$(BIN)/python bench/sentiment_bench.py
	$(BIN)/python bench/recommend_bench.py
	$(BIN)/python bench/abuse_bench.py

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) data/models/smollm2-135m-instruct data/redis .pytest_cache
