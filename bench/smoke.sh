#!/usr/bin/env bash
# The benchmark's smoke test (ctest label "bench"): run bench/compare.sh
# quickly (-q) so that every load generator mode, the backend and the peer
# configurations keep working.  It checks that each mode completes and
# prints numbers; it asserts nothing about speed.  Peers that are not
# installed (haproxy, hitch, stunnel4) are reported by compare.sh and left
# out; mailtlsd itself is always measured.
#
# usage: smoke.sh MAILTLSD LOADGEN BACKEND
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: smoke.sh MAILTLSD LOADGEN BACKEND" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/mailtlsd-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT

# compare.sh wants a build tree's layout.
mkdir -p "$work/build/bench"
ln -s "$1" "$work/build/mailtlsd"
ln -s "$2" "$work/build/bench/loadgen"
ln -s "$3" "$work/build/bench/backend"

# Below the ephemeral port range, and away from a compare.sh run by hand.
export BENCH_PORT=$((21000 + RANDOM % 10000))
"$here/compare.sh" -q -b "$work/build" -o "$work/results.txt"

# Every measured proxy has a number for every scenario's main metric.
status=0
for p in $(cut -d' ' -f1 "$work/results.txt" | sort -u); do
	for k in "full cpu_us_per_op" "resumed cpu_us_per_op" \
	    "upload mb_per_s" "download mb_per_s" "idle alive" \
	    "pingpong p50_us"; do
		if ! grep -Eq "^$p $k [0-9]+(\.[0-9]+)?$" "$work/results.txt"; then
			echo "smoke: no number for $p $k" >&2
			status=1
		fi
	done
done
if ! grep -q '^mailtlsd ' "$work/results.txt"; then
	echo "smoke: mailtlsd was not measured" >&2
	status=1
fi
exit $status
