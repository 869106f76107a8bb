# Thin wrapper over CMake for the everyday commands. CMake is the source of
# truth; see CMakeLists.txt.
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
PREFIX ?= /usr/local

.PHONY: all deps build run install test test-unit bench fuzz clean

all: build

deps:
	@sh scripts/deps.sh

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	cmake --build build -j $(JOBS)

run: build
	./build/cqrsd serve --data ./data --listen 127.0.0.1:8080

# bin/cqrsd, lib/libcqrs.{so,a}, include/cqrs/*.h, lib/pkgconfig/cqrs.pc
# and the example domain modules (lib/cqrsd/NAME/) under PREFIX.
install: build
	cmake --install build --prefix "$(PREFIX)"

# Plain build, then ThreadSanitizer on the threaded tests, then
# AddressSanitizer + UBSan without the long load suites (label `load`,
# tests/CMakeLists.txt). The answers are checked against docs/openapi.yaml
# once, in the plain run (the sanitizer runs leave out openapi_responses;
# their answers are the same). The last thing printed is ctest's summary
# line.
# node, npm and chromium: the JavaScript client's tests and the browser
# test (tests/blackbox/test_js_client.py, test_ui_browser.py). npm only if
# there is none: a Node.js from another source brings its own, which
# Debian's npm package would conflict with.
test: build
	@sh scripts/deps.sh prometheus postgresql nats-server openssl \
		python3-yaml python3-jsonschema nodejs chromium
	@command -v npm >/dev/null || sh scripts/deps.sh npm
	cmake -S . -B build-tsan -DCQ_SANITIZE=thread -DCQ_BENCH=OFF >/dev/null
	cmake --build build-tsan -j $(JOBS)
	cmake -S . -B build-asan -DCQ_SANITIZE=address -DCQ_BENCH=OFF >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build && ctest --output-on-failure --no-tests=error -j 2
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
		ctest --output-on-failure --no-tests=error -L tsan -LE browser \
		-E "^openapi_responses$$" -j 2
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 \
		ctest --output-on-failure --no-tests=error -LE "browser|load" \
		-E "^openapi_responses$$" -j 2

# The benchmarks (bench/run.sh; bench/README.md): some 25 minutes with the
# defaults, BENCH_QUICK=1 for a few. gnuplot draws the figures of
# docs/benchmarks.md, which the run rewrites (BENCH_DOCS=0: not); npm
# installs the Emmett peer into build/emmett. npm only if there is none (as
# for `test`).
bench: build
	@sh scripts/deps.sh wrk postgresql nats-server gnuplot-nox
	@command -v npm >/dev/null || sh scripts/deps.sh npm
	sh bench/run.sh

# Fuzzing with libFuzzer: clang (from apt), ASan+UBSan, every target in
# tests/fuzz for FUZZ_SECONDS each (new inputs go to build-fuzz/corpus/,
# never into the committed corpus). Fails if a target finds a crash.
FUZZ_SECONDS ?= 60
fuzz: deps
	@sh scripts/deps.sh clang libclang-rt-dev
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCQ_FUZZ=ON \
		-DCQ_SANITIZE=address -DCQ_BENCH=OFF >/dev/null
	cmake --build build-fuzz -j $(JOBS)
	cd build-fuzz && ctest --output-on-failure --no-tests=error -L fuzz
	sh scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

clean:
	rm -rf build build-asan build-tsan build-fuzz
