#!/usr/bin/env bash
# profile.sh: count the instructions mailtlsd spends per mail session, on a
# parsed mail listener and on a protocol = none listener in front of the same
# mail backend, under valgrind's callgrind (Debian's valgrind package; this
# script installs nothing).  Instruction counts do not vary from run to run
# as CPU times do on a shared machine, so they tell what a change to the
# parsing path costs; the output files show where (callgrind_annotate).
#
# usage: bench/profile.sh [-b BUILD_DIR] [-x smtp|imap|pop3] [-M MAIL_BYTES]
#                         [-d SECONDS] [-o OUT_DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$here/../build}
proto=pop3
bytes=1000000
dur=20
out=
while getopts b:x:M:d:o: o; do
	case $o in
	b) build=$OPTARG ;;
	x) proto=$OPTARG ;;
	M) bytes=$OPTARG ;;
	d) dur=$OPTARG ;;
	o) out=$OPTARG ;;
	*) sed -n 's/^# usage: /usage: /p' "$0" >&2; exit 2 ;;
	esac
done
for t in valgrind callgrind_annotate openssl; do
	command -v "$t" >/dev/null || { echo "profile.sh: $t not found" >&2; exit 2; }
done
for f in "$build/mailtlsd" "$build/bench/loadgen" "$build/bench/backend"; do
	[ -x "$f" ] || { echo "profile.sh: $f not built" >&2; exit 2; }
done
work=$(mktemp -d)
[ -n "$out" ] || out=$work
mkdir -p "$out"
pids=()
declare -A per
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ "$out" = "$work" ] || rm -rf "$work"
}
trap cleanup EXIT

# Two free loopback ports, chosen by the kernel.
read -r bport lport < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 \
    -subj /CN=localhost 2>/dev/null
"$build/bench/backend" -P "$proto" "127.0.0.1:$bport" >"$work/backend.log" 2>&1 &
pids+=($!)

for kind in "$proto" none; do
	cat >"$work/$kind.conf" <<EOF
[global]
workers = 1
log_level = error
[l]
listen = 127.0.0.1:$lport
protocol = $kind
client_tls = implicit
backend = 127.0.0.1:$bport
cert = $work/cert.pem
key = $work/key.pem
EOF
	valgrind -q --tool=callgrind --callgrind-out-file="$out/cg.$kind.out" \
	    "$build/mailtlsd" -c "$work/$kind.conf" >"$work/mailtlsd.$kind.log" 2>&1 &
	mp=$!
	for _ in $(seq 200); do
		(exec 3<>"/dev/tcp/127.0.0.1/$lport") 2>/dev/null && break
		sleep 0.2
	done
	"$build/bench/loadgen" -a "127.0.0.1:$lport" -m session -x "$proto" \
	    -M "$bytes" -c 1 -d "$dur" -w 2 >"$out/loadgen.$kind.out" 2>&1
	kill -TERM "$mp"
	wait "$mp" || true
	# Every session the process served, warm-up included, as callgrind
	# counted the whole process (the probe connection above is one more).
	n=$(sed -n 's/.* verified=\([0-9]*\).*/\1/p' "$out/loadgen.$kind.out")
	ir=$(callgrind_annotate "$out/cg.$kind.out" 2>/dev/null |
	    sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
	if [ -z "$n" ] || [ "$n" -eq 0 ] || [ -z "$ir" ]; then
		echo "profile.sh: no sessions measured for $kind" >&2
		cat "$out/loadgen.$kind.out" >&2
		exit 1
	fi
	per[$kind]=$(awk -v i="$ir" -v n="$n" 'BEGIN { print i / n / 1e6 }')
	printf '%-5s %6d sessions  %8.2f M instructions per session\n' \
	    "$kind" "$n" "${per[$kind]}"
done
awk -v a="${per[$proto]}" -v b="${per[none]}" -v p="$proto" \
    'BEGIN { printf "ratio %s / none: %.2f\n", p, a / b }'
echo "profiles: $out/cg.$proto.out $out/cg.none.out (callgrind_annotate)"
