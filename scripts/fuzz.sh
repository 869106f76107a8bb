#!/bin/sh
# Run every fuzz target of a -DCQ_FUZZ=ON build for a bounded time.
#
#   sh scripts/fuzz.sh BUILD_DIR [SECONDS_PER_TARGET]      (make fuzz)
#
# Each target starts from its committed corpus (tests/fuzz/corpus/NAME,
# only read) and writes the new inputs it finds to BUILD_DIR/corpus/NAME;
# a crash leaves its input as BUILD_DIR/crash-* (libFuzzer's -artifact_prefix)
# and makes this script exit 1 after the other targets have run. To keep a
# new input for the test run, copy it into tests/fuzz/corpus/NAME (named by
# its SHA-1, as the others are).
set -u

build=${1:?usage: fuzz.sh BUILD_DIR [SECONDS]}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
failed=""

for src in "$root"/tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    [ "$name" = fuzz_server ] && continue
    bin="$build/tests/$name"
    corpus=${name#fuzz_}
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin is missing (tests/fuzz/$name.c is not in CQ_FUZZ_TARGETS?)"
        failed="$failed $name"
        continue
    fi
    mkdir -p "$build/corpus/$corpus"
    echo "fuzz: $name for $seconds s"
    # -close_fd_mask=3: the targets' own output (the CLI's table and
    # messages, the server's log) is not libFuzzer's; its reports still
    # reach stderr. -timeout: an input may ask the server to wait up to
    # 30 s (wait_ms), which is not a hang.
    if ! TMPDIR="$build" "$bin" -max_total_time="$seconds" -timeout=60 \
            -rss_limit_mb=4096 -close_fd_mask=3 -print_final_stats=1 \
            -artifact_prefix="$build/crash-$name-" \
            "$build/corpus/$corpus" "$root/tests/fuzz/corpus/$corpus"; then
        failed="$failed $name"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed"
    exit 1
fi
echo "fuzz: every target ran $seconds s without a failure"
