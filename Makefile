# kubeha.apiserver: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
# Where ansible-test and ansible-playbook see this checkout as kubeha.apiserver.
COLL := .build/collections/ansible_collections/kubeha/apiserver

.PHONY: setup lint sanity unit lab-build lab-up lab-down lab-status lab-test test-kubeadm-lab test test-kubeadm test-extended test-k8s-previous test-compat demo bench bench-fleet clean collection docs

setup:
	@bash scripts/setup.sh

# The collection as Ansible sees it: the git-tracked (and new, not ignored) files under ansible_collections/.
collection: setup
	@rm -rf $(COLL) && mkdir -p $(COLL)
	@git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --ignore-missing-args --files-from=- ./ $(COLL)/
	@# ansible-test takes its list of files from git when the collection is a repository.
	@cd $(COLL) && git init -q && git add -A

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint --profile production
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	$(BIN)/antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs dependent \
	  --disallow-unknown-collection-refs .

# ansible-test keeps its sanity virtualenvs under $$HOME/.ansible/test: give it a home in the cache,
# with a pip bootstrap that uses the package index (its own get-pip download is not reachable here).
ANSIBLE_TEST_HOME := $(or $(KUBEHA_CACHE),/var/cache/kubeha)/ansible-test-home
sanity: collection
	@install -D -m 644 scripts/ansible-test-get-pip.py $(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_24_2.py
	cd $(COLL) && HOME=$(ANSIBLE_TEST_HOME) $(CURDIR)/$(BIN)/ansible-test sanity --python 3.11 --venv \
	  --requirements --color no

# The unit tests and sanity on every ansible-core release the collection supports (requirements/compat/matrix.txt),
# each in a virtualenv kept in the cache. Outside `make test` for time (see README, Supported versions).
test-compat: collection
	bash scripts/test_compat.sh $(COLL)

# The collection's HTML documentation (antsibull-docs, Sphinx -W), all generated: $(DOCS)/build/html/index.html.
DOCS := .build/docs
docs: collection
	$(PY) docs/build.py --collections-path $(abspath $(COLL)/../../..) --dest $(DOCS)

unit: setup
	$(BIN)/pytest tests/unit -q

lab-build: setup
	@bash tests/lab/build_binaries.sh >/dev/null
	@. tests/lab/versions.env && for suite in $$DEBIAN_SUITE $$DEBIAN_SUITE_NEWER; do \
	  bash tests/lab/build_images.sh $$suite >/dev/null; done

lab-up: lab-build
	$(PY) tests/lab/lab.py up

lab-down: setup
	$(PY) tests/lab/lab.py down

lab-status: setup
	$(PY) tests/lab/lab.py status

# The lab acceptance tests bring the lab up (or reuse a running one) and take it down at the end.
lab-test: lab-build
	$(BIN)/pytest tests/lab/test_lab.py tests/lab/test_zz_down.py -q

# The kubeadm flavour's acceptance (tests/lab/kubeadm_flavour.py): kubeadm init and join, static pods, a kubelet and a
# kube-proxy pod on every node Ready, no image pulled; then lab down.
test-kubeadm-lab: lab-build
	KUBEHA_LAB_FLAVOUR=kubeadm $(BIN)/pytest tests/lab/test_kubeadm_lab.py tests/lab/test_zz_down.py -q \
	  -p no:cacheprovider --durations=10

# make test runs each lab suite on one flavour (README, The lab): every collection suite on the binary flavour, then
# on the kubeadm flavour its acceptance, site.yml --check on the untouched cluster, a new worker's kubeadm join
# through its own VIP, and the Node-Ready drill (that worker beside one left at the first master). Each ends with its lab down (test_zz_down.py). Seven suites and one test run in
# `make test-extended` instead, for time (README, Molecule).
RESET_THEN_SITE := tests/integration/test_local_proxy.py::test_reset_removes_everything_then_site_restores
BINARY_SUITE := tests/lab/test_lab.py tests/integration/test_cluster_networks_cluster.py \
  tests/integration/test_cluster_endpoint_cluster.py tests/integration/test_discovery_access_cluster.py \
  tests/integration/test_local_proxy.py tests/lab/test_zz_down.py
KUBEADM_SUITE := tests/lab/test_kubeadm_lab.py tests/integration/test_cluster_networks_cluster.py \
  tests/integration/test_site_check_mode.py tests/integration/test_kubeadm_join_through_vip.py \
  tests/integration/test_node_ready_judge.py tests/lab/test_zz_down.py
# The certificate role's own suite (forced restarts, rollback, recovery, reset) is here for time since 2026-12-07;
# make test proves the VIPs in every certificate through the molecule install's verify (README, Molecule). The nftables
# data path's lab drills are here until the mode is auto's choice on nodes without IPVS (README, What runs where).
# The ipvs_service module's and the exclude module's own lab suites are here for time since 2026-12-07 (make test keeps
# the guard's IPVS path on w1's kernel and the VIP through kube-proxy's restart under load: README, Molecule).
EXTENDED := tests/integration/test_local_proxy_day2.py tests/integration/test_local_proxy_kubeconfigs.py \
  tests/integration/test_molecule_day2.py tests/integration/test_apiserver_cert_sans.py \
  tests/integration/test_nftables_mode.py tests/integration/test_ipvs_service_kernel.py \
  tests/integration/test_kubeproxy_exclude_cidr_cluster.py
# make test-extended starts from the drills' install (molecule default), for reset-then-site and the day-2 suite.
EXTENDED_INSTALL := tests/integration/test_local_proxy.py::test_every_guard_discovers_the_masters_and_needs_the_grant_to
test: lint sanity lab-build
	$(BIN)/pytest tests/unit $(BINARY_SUITE) --deselect $(RESET_THEN_SITE) -q -p no:cacheprovider --durations=40
	KUBEHA_LAB_FLAVOUR=kubeadm $(BIN)/pytest $(KUBEADM_SUITE) -q -p no:cacheprovider --durations=10

# The collection's lab suites on the kubeadm flavour, by hand (README, The kubeadm flavour): not in make test yet.
KUBEADM_COLLECTION_SUITE := tests/lab/test_kubeadm_lab.py tests/integration/test_apiserver_cert_sans.py \
  tests/integration/test_cluster_endpoint_cluster.py \
  tests/integration/test_ipvs_service_kernel.py tests/integration/test_kubeproxy_exclude_cidr_cluster.py \
  tests/integration/test_local_proxy.py tests/integration/test_local_proxy_day2.py \
  tests/integration/test_kubeadm_join_through_vip.py tests/lab/test_zz_down.py
test-kubeadm: lab-build
	KUBEHA_LAB_FLAVOUR=kubeadm $(BIN)/pytest $(KUBEADM_COLLECTION_SUITE) -q -p no:cacheprovider --durations=40

# The molecule install with reset-then-site and the day-2 suite, then the kubeconfig switch suite (refusal, check mode,
# present, rollback, absent byte for byte), the molecule day2 scenario (a fourth master joins, then leaves) and the
# certificate role's suite, then lab down.
test-extended: lab-build
	$(BIN)/pytest tests/lab/test_lab.py $(EXTENDED_INSTALL) $(RESET_THEN_SITE) $(EXTENDED) tests/lab/test_zz_down.py -q -p no:cacheprovider \
	  --durations=20

# The collection on the previous Kubernetes minor (K8S_VERSION_PREVIOUS in tests/lab/versions.env): a new lab of
# that release, its acceptance (the apiservers answer that version), the molecule default scenario (site.yml,
# idempotence, verify on every node), lab down. Outside `make test` for time; the README records the last result.
K8S_PREVIOUS = $(shell . tests/lab/versions.env && echo $$K8S_VERSION_PREVIOUS)
test-k8s-previous: lab-build
	$(PY) tests/lab/lab.py down
	KUBEHA_K8S_VERSION=$(K8S_PREVIOUS) bash tests/lab/build_binaries.sh >/dev/null
	KUBEHA_K8S_VERSION=$(K8S_PREVIOUS) $(BIN)/pytest tests/lab/test_lab.py tests/integration/test_local_proxy.py::test_every_guard_discovers_the_masters_and_needs_the_grant_to tests/lab/test_zz_down.py -q -p no:cacheprovider

# The main job against the built-in lab: lab up, playbooks/site.yml, then a master killed under load. On the kubeadm
# flavour unless KUBEHA_LAB_FLAVOUR says otherwise: the cluster most users run (static pods, kubelets, kube-proxy pods).
demo: export KUBEHA_LAB_FLAVOUR := $(or $(KUBEHA_LAB_FLAVOUR),kubeadm)
demo: lab-up
	$(PY) tests/lab/lab.py status
	$(PY) tests/lab/scenarios.py

# Failover and overhead of the IPVS and haproxy modes beside a kubespray-like nginx, on the lab: a table,
# .build/bench/bench.json and its failover timeline .build/bench/failover.png (tests/bench/plot.py draws it again:
# `--copy-to docs/images/failover.png` for the README). Reuses a running lab (or brings one up), leaves it up.
bench: lab-build
	PYTHONPATH=tests/lab $(PY) tests/bench/bench.py

# What a fleet's health checks cost each apiserver: the guard's own probing code for N simulated nodes, beside the
# anchors' check patterns, against the kubeadm lab's apiservers (tests/bench/fleet_bench.py): a table with each
# pattern extrapolated to 5,000 nodes, and .build/bench/fleet.json. Brings a kubeadm lab up unless one runs.
bench-fleet: export KUBEHA_LAB_FLAVOUR := $(or $(KUBEHA_LAB_FLAVOUR),kubeadm)
bench-fleet: lab-up
	PYTHONPATH=tests/lab $(PY) tests/bench/fleet_bench.py

clean: lab-down
	rm -rf .build
