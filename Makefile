# Thin wrapper over CMake. `make demo` and `make test` are the two commands of the README.
MAKEFLAGS  += --no-print-directory
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)
# Tests mostly wait on their peers and on compressed time: three per core in the plain pass, two
# per core under the sanitizers, whose tests use two to three times the CPU while the scrape
# deadlines they check stay the same.
TEST_JOBS      ?= $(shell echo $$(( 3 * $$(nproc) )))
ASAN_TEST_JOBS ?= $(shell echo $$(( 2 * $$(nproc) )))

BUILD_DEPS := cmake make gcc pkg-config libuv1-dev libjansson-dev libmbedtls-dev \
              libcurl4-openssl-dev zlib1g-dev libcmocka-dev libexpat1-dev libyaml-dev node-llhttp \
              clang-format
TEST_DEPS  := python3 python3-botocore python3-prometheus-client prometheus python3-yaml python3-h2 \
              golang-go golang-github-prometheus-client-golang-dev \
              cppcheck clang-tidy unzip curl openssl util-linux mount
FUZZ_DEPS  := clang libclang-rt-14-dev
BENCH_DEPS := prometheus wrk valgrind
IMAGE_DEPS := podman buildah runc debootstrap

# The one version: CMake's project(VERSION), read here for the image tag (docs/image.md).
VERSION := $(shell awk '/^project.cni-metrics-helper VERSION / {print $$3}' CMakeLists.txt)
IMAGE   ?= cni-metrics-helper
PODMAN  ?= podman

FMT_FILES = $(shell git ls-files -co --exclude-standard -- 'src/*.[ch]' 'include/*.[ch]' 'test/*.[ch]' 2>/dev/null)

.PHONY: all build deps demo test test-asan fmt fmt-check fuzz readme clean image version

all: build

deps:
	@.ci/deps.sh $(BUILD_DEPS) $(TEST_DEPS) $(IMAGE_DEPS)
	@.ci/k8s-tools.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# A simulated cluster (ipamD fleet), a CloudWatch stand-in, the daemon; prints what it published.
demo: build
	/usr/bin/python3 test/sim/demo.py $(BUILD) 4

# The sanitizer tree builds at the lowest priority while the plain pass runs (its tests mostly
# wait, so the compiler takes the idle CPU and never the tests'); test-asan then finds it built.
test: build fmt-check
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMH_SANITIZE=ON >/dev/null
	@nice -n 19 cmake --build $(ASAN_BUILD) -j $(JOBS) >$(ASAN_BUILD)/build.log 2>&1 & asan=$$!; \
	  (cd $(BUILD) && ctest --output-on-failure -j $(TEST_JOBS)); rc=$$?; \
	  wait $$asan || { cat $(ASAN_BUILD)/build.log; exit 1; }; exit $$rc
	@$(MAKE) --no-print-directory test-asan

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer, less what sanitizers
# add nothing to (label "once", test/CMakeLists.txt): the image, the rendered manifests, static
# checks and long waits in compressed time ran in the plain pass.
test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMH_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(ASAN_TEST_JOBS) -LE once

fmt:
	clang-format -i $(FMT_FILES)

fmt-check: deps
	@clang-format --dry-run -Werror $(FMT_FILES) || \
	  { echo "unformatted code: run 'make fmt'"; exit 1; }

# libFuzzer targets (clang, ASan+UBSan, warnings are errors as in the gcc builds): build-fuzz/fuzz_*.
# Run one with
#   build-fuzz/test/fuzz_config -max_total_time=600 test/fuzz/corpus/config
fuzz:
	@.ci/deps.sh $(BUILD_DEPS) $(FUZZ_DEPS)
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMH_FUZZ=ON \
	  -DCMH_SANITIZE=ON -DCMH_WERROR=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)

# Benchmarks: every test/bench/*.bench.sh in name order against $(BUILD).
.PHONY: bench
bench: build
	@.ci/deps.sh $(BENCH_DEPS)
	@test/bench/run_all.sh $(BUILD)

# Soak (issue 9): 20,000 simulated nodes, 1 s interval, SOAK_MINUTES (30) against the stand-ins;
# RSS/fd curve, rounds, datums. Short sanitizer runs: see the header of test/soak/soak.sh.
.PHONY: soak
soak: build
	@test/soak/soak.sh $(BUILD)

# Regenerates the generated tables of docs/configuration.md (src/core/config.c) and docs/metrics.md
# (src/round/metrics.c).
readme: build
	@test/integration/check_readme_config.sh --update

version:
	@echo $(VERSION)

# The container image into podman's storage as $(IMAGE):$(VERSION) and $(IMAGE):latest, with no
# registry needed (.ci/podman-setup.sh: runtime settings, local Debian base images). Built from the
# same sources, podman's layer cache makes it a no-op. Multi-arch and release: docs/image.md.
image:
	@.ci/deps.sh $(IMAGE_DEPS)
	@PODMAN="$(PODMAN)" .ci/podman-setup.sh
	$(PODMAN) build --network=host --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
