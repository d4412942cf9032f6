# lambda-api — thin wrappers; CI runs `bash .ci/run`, which runs `make test`.
# `make help` lists the targets.

CARGO     ?= cargo
LISTEN    ?= 127.0.0.1:8080
SIM_ADDR  ?= 127.0.0.1:9090
RUN_DIR   ?= run
SIM_DELAY ?= 2000
RELEASE   := target/release

# The allocator settings the packaged unit runs the service with (see config/deb/lambda-api.service).
TUNABLES  := $(shell sed -n 's/^Environment=GLIBC_TUNABLES=//p' config/deb/lambda-api.service)

# The demo cluster of config/okeanos-sim.json.
DEMO_USER   := 1e9b2a3c-5d4f-4e6a-8b7c-9d0e1f2a3b4c
DEMO_TOKEN  := demo-token-tJ3b3f32f23ceuqdoS
CREATE_BODY := {"instance_name": "my-cluster", "master_name": "master", "project_name": "lambda.grnet.gr", "slaves": 1, "vcpus_master": 2, "vcpus_slave": 2, "ram_master": 2048, "ram_slave": 2048, "disk_master": 10, "disk_slave": 10}

.PHONY: bench bench-engine wrk help build release run run-proxied cert nginx smoke test test-hostile test-deb deb lint unit smoke-demo clean
PROXY     ?= 127.0.0.1:8443

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

build: ## debug build of every package: lambda-api, okeanos-sim, lambda-bench
	$(CARGO) build --locked --workspace

release: ## optimised build of every package
	$(CARGO) build --locked --workspace --release

run: release ## run the simulator and the service on loopback with a fresh demo instance
	@mkdir -p $(RUN_DIR)
	@rm -f $(RUN_DIR)/lambda-api.db $(RUN_DIR)/lambda-api.db-wal $(RUN_DIR)/lambda-api.db-shm
	@$(RELEASE)/okeanos-sim --listen $(SIM_ADDR) --transition-ms $(SIM_DELAY) \
		> $(RUN_DIR)/okeanos-sim.log 2>&1 & echo $$! > $(RUN_DIR)/okeanos-sim.pid
	@export LAMBDA_API_DATABASE=$(RUN_DIR)/lambda-api.db; \
	 $(RELEASE)/lambda-api instances add --config config/lambda-api.toml --name demo-hadoop \
		--owner $(DEMO_USER) --master 101 --slave 102 --slave 103 > $(RUN_DIR)/instance-id
	@echo "okeanos-sim on http://$(SIM_ADDR) (log: $(RUN_DIR)/okeanos-sim.log)"
	@echo "demo lambda instance $$(cat $(RUN_DIR)/instance-id); start it with:"
	@echo
	@echo "  curl -X POST -H \"Authentication:Token $(DEMO_TOKEN)\" -F \"action=start\" \\"
	@echo "   'http://$(LISTEN)/api/lambda-instances/$$(cat $(RUN_DIR)/instance-id)/'"
	@echo
	@echo "or create a cluster of your own (a master and one slave) with:"
	@echo
	@echo "  curl -X POST -H \"Authorization: Token $(DEMO_TOKEN)\" -H 'Content-Type: application/json' \\"
	@echo "   -d '$(subst ",\",$(CREATE_BODY))' \\"
	@echo "   'http://$(LISTEN)/api/lambda-instance/'"
	@echo
	@trap 'kill $$(cat $(RUN_DIR)/okeanos-sim.pid $(RUN_DIR)/lambda-api.pid 2>/dev/null) 2>/dev/null' EXIT INT TERM; \
	 GLIBC_TUNABLES=$(TUNABLES) LAMBDA_API_DATABASE=$(RUN_DIR)/lambda-api.db LAMBDA_API_LISTEN=$(LISTEN) \
	 LAMBDA_API_ASTAKOS_URL=http://$(SIM_ADDR)/identity/v2.0 LAMBDA_API_POLL_INTERVAL_MS=250 \
	 $(RELEASE)/lambda-api serve --config config/lambda-api.toml & \
	 echo $$! > $(RUN_DIR)/lambda-api.pid; wait $$!

cert: ## a self-signed TLS pair for trying the nginx front ($(RUN_DIR)/tls)
	@mkdir -p $(RUN_DIR)/tls
	@test -f $(RUN_DIR)/tls/lambda-api.crt || { openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
		-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout $(RUN_DIR)/tls/lambda-api.key -out $(RUN_DIR)/tls/lambda-api.crt 2>/dev/null \
		&& echo "made $(RUN_DIR)/tls/lambda-api.crt"; }

nginx: ## install nginx and openssl from the distribution's packages if missing
	@PATH=$$PATH:/usr/sbin; command -v nginx > /dev/null && command -v openssl > /dev/null || \
	 { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl > /dev/null; }

run-proxied: nginx cert release ## `make run` behind nginx: TLS on https://$(PROXY)
	@mkdir -p $(RUN_DIR)/tmp
	@bash .ci/nginx-conf $(abspath $(RUN_DIR)) $(PROXY) $(LISTEN) > $(RUN_DIR)/nginx.conf
	@PATH=$$PATH:/usr/sbin; nginx -p $(abspath $(RUN_DIR)) -c $(abspath $(RUN_DIR))/nginx.conf \
		-g 'daemon off;' &
	@echo "nginx on https://$(PROXY) -> lambda-api on http://$(LISTEN)"
	@echo "  try: curl --cacert $(RUN_DIR)/tls/lambda-api.crt https://$(PROXY)/healthz"
	@# nginx writes $(RUN_DIR)/nginx.pid itself (the pid line of the rendered config).
	@trap 'kill $$(cat $(RUN_DIR)/nginx.pid) 2>/dev/null' EXIT INT TERM; $(MAKE) --no-print-directory run

smoke: ## drive a running `make run` with curl: 401, 404, 400, start, stop; create, stop, start, destroy
	@bash .ci/smoke "http://$(LISTEN)" "$$(cat $(RUN_DIR)/instance-id)" "$(DEMO_TOKEN)"

lint: ## formatting and clippy, warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit: ## unit tests of every package, then the service's integration tests
	$(CARGO) test --locked --workspace --lib --bins
	$(CARGO) test --locked --test tests

test-hostile: nginx ## hostile clients against the service and through nginx (installs nginx)
	PATH=$$PATH:/usr/sbin $(CARGO) test --locked --test hostile -- --test-threads 1

smoke-demo: release ## `make run` in the background on other ports, then `make smoke` against it
	@bash .ci/smoke-demo

PACKAGED_DB := /var/lib/lambda-api/lambda-api.db
PACKAGED_LISTEN := unix:/run/lambda-api/api.sock

deb: release ## the Debian package in target/debian/ (installs cargo-deb from crates.io if missing)
	@command -v cargo-deb > /dev/null || $(CARGO) install --locked cargo-deb
	@mkdir -p target/deb
	@# The packaged conffile: the documented one, with the database in the state directory.
	@sed -e 's|^database = "lambda-api.db"$$|database = "$(PACKAGED_DB)"|' \
		-e 's|^listen = "127.0.0.1:8080"$$|listen = "$(PACKAGED_LISTEN)"|' config/lambda-api.toml \
		> target/deb/lambda-api.toml
	@grep -qx 'database = "$(PACKAGED_DB)"' target/deb/lambda-api.toml
	@grep -qx 'listen = "$(PACKAGED_LISTEN)"' target/deb/lambda-api.toml
	$(CARGO) deb --locked --no-build -p lambda-api

test-deb: deb nginx ## install the package on this machine, run it as its user against the simulator, purge it
	bash .ci/deb-test

test: lint unit test-hostile smoke-demo test-deb ## everything CI runs

wrk: ## install wrk from the distribution's packages if missing
	@command -v wrk > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk > /dev/null; }

bench: wrk release ## measure speed and footprint against ceilings of the same run (never in `make test`)
	@mkdir -p target/bench
	$(RELEASE)/lambda-bench

bench-engine: release ## the engine section of `make bench` alone: clusters brought up against D = 5 s VMs
	@mkdir -p target/bench
	$(RELEASE)/lambda-bench engine

clean: ## remove build output and the demo's files
	$(CARGO) clean
	rm -rf $(RUN_DIR)
