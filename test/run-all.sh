#!/usr/bin/env bash
# Build mailtlsd and run every test:
#   1. a normal build in build/ and its ctest (unit + integration)
#   2. a sanitizer build (ASan + UBSan) in build-asan/ and its ctest
#   3. if the project has fuzz targets, a clang build in build-fuzz/ and
#      `ctest -L fuzz`
# Every stage runs even if an earlier one failed; the exit status is non-zero
# if any stage failed.  Set JOBS to change build parallelism.
#
# Every stage passes -DBUILD_TESTING=ON itself: a build directory configured
# without tests (by hand, or by an older quickstart.sh, which now builds in
# build-quickstart/) must not turn into "No tests were found".
set -euo pipefail

cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
failed=()

section() {
	printf '\n==================== %s ====================\n' "$*"
}

stage() {
	# stage NAME BUILD_DIR CTEST_ARGS -- CMAKE_ARGS...
	local name=$1 dir=$2 ctest_args=$3
	shift 4
	section "$name: configure ($dir)"
	if ! cmake -S . -B "$dir" -DBUILD_TESTING=ON "$@"; then
		failed+=("$name: configure")
		return
	fi
	section "$name: build"
	if ! cmake --build "$dir" -j "$jobs"; then
		failed+=("$name: build")
		return
	fi
	section "$name: test"
	# shellcheck disable=SC2086 # ctest_args is a word list on purpose
	if ! (cd "$dir" && ctest --output-on-failure --no-tests=error \
	    $ctest_args); then
		failed+=("$name: tests")
	fi
}

stage "normal" build "" -- -DCMAKE_BUILD_TYPE=RelWithDebInfo

# -LE container: the container test builds its own binary inside the image,
# so the sanitizer build of the host binary is not what it tests; it ran once
# in the normal stage.
stage "sanitizers" build-asan "-LE container" -- -DCMAKE_BUILD_TYPE=Debug \
	-DENABLE_SANITIZERS=ON

if grep -q 'option(ENABLE_FUZZ' CMakeLists.txt &&
    [ -f test/fuzz/CMakeLists.txt ]; then
	if command -v clang >/dev/null 2>&1; then
		stage "fuzz" build-fuzz "-L fuzz" -- -DCMAKE_C_COMPILER=clang \
			-DCMAKE_BUILD_TYPE=Debug -DENABLE_FUZZ=ON
	else
		section "fuzz"
		echo "clang is not installed: cannot build the fuzz targets"
		failed+=("fuzz: clang missing")
	fi
else
	section "fuzz"
	echo "no fuzz targets in this tree (no ENABLE_FUZZ / test/fuzz/CMakeLists.txt)"
fi

section "summary"
if [ ${#failed[@]} -ne 0 ]; then
	printf 'FAILED: %s\n' "${failed[@]}"
	exit 1
fi
echo "all stages passed"
