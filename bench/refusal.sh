#!/usr/bin/env bash
# refusal.sh: what a connection refused for its client's limits costs
# mailtlsd, next to what a full TLS handshake costs (issue 16).
#
# One mailtlsd (one worker, pinned to CPU 0 when taskset is there), three
# listeners: "full" without limits (bench/loadgen -m full: connect, full
# TLS 1.3 handshake, one echoed byte, close), and "implicit" and
# "starttls" (SMTP) with max_per_client = 1, whose one place is taken by a
# connection held open all along, so that every connection of the flood is
# refused: closed at once on the implicit listener, after the one-line 421
# on the STARTTLS one.  The figure is mailtlsd's CPU time (utime + stime,
# all threads, from /proc/PID/stat) per connection.  The flood client
# connects, reads to EOF and closes, one connection at a time.
#
# usage: bench/refusal.sh [-b BUILD_DIR] [-n CONNECTIONS] [-d SECONDS]
set -euo pipefail

build=./build
n=20000
dur=5
while getopts "b:n:d:h" o; do
	case $o in
	b) build=$OPTARG ;;
	n) n=$OPTARG ;;
	d) dur=$OPTARG ;;
	*) sed -n '2,16p' "$0"; exit 2 ;;
	esac
done
mailtlsd=$build/mailtlsd
loadgen=$build/bench/loadgen
backend=$build/bench/backend
for f in "$mailtlsd" "$loadgen" "$backend"; do
	[ -x "$f" ] || { echo "refusal.sh: $f missing (build first)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "refusal.sh: python3 missing" >&2; exit 1; }

pin_proxy=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
	pin_proxy=(taskset -c 0)
	pin_load=(taskset -c 1)
fi

work=$(mktemp -d /tmp/mailtlsd-refusal.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

base=$((21000 + RANDOM % 10000))
bport=$base pfull=$((base + 1)) pimpl=$((base + 2)) pstls=$((base + 3))

wait_port() {
	local i
	for i in $(seq 1 200); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}

cat >"$work/mailtlsd.conf" <<EOF
[global]
workers = 1
log_level = error
shutdown_timeout = 1s

[full]
listen = 127.0.0.1:$pfull
protocol = none
client_tls = implicit
backend = 127.0.0.1:$bport
cert = auto
max_connections = 20000

[implicit]
listen = 127.0.0.1:$pimpl
protocol = smtp
client_tls = implicit
backend = 127.0.0.1:$bport
cert = auto
handshake_timeout = 1h
max_per_client = 1

[starttls]
listen = 127.0.0.1:$pstls
protocol = smtp
client_tls = starttls
backend = 127.0.0.1:$bport
cert = auto
handshake_timeout = 1h
max_per_client = 1
EOF

"${pin_load[@]}" "$backend" "127.0.0.1:$bport" >"$work/backend.out" 2>&1 &
pids+=($!)
wait_port "$bport" || { echo "refusal.sh: backend did not start" >&2; exit 1; }
"${pin_proxy[@]}" "$mailtlsd" -c "$work/mailtlsd.conf" 2>"$work/mailtlsd.log" &
mpid=$!
pids+=("$mpid")
for p in $pfull $pimpl $pstls; do
	wait_port "$p" || { cat "$work/mailtlsd.log" >&2; exit 1; }
done

# utime and stime of every thread of ${1}, in clock ticks.
ticks() {
	awk '{ print $14, $15 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

flood() {
	"${pin_load[@]}" python3 - "$1" "$n" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
# The place of 127.0.0.1 is taken for the whole flood.
held = socket.create_connection(("127.0.0.1", port))
got = set()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
    except ConnectionResetError:
        pass
    except socket.timeout:
        data = b"(admitted: not refused)"
    s.close()
    got.add(data)
held.close()
print(" ".join(repr(g) for g in sorted(got)))
EOF
}

echo "mailtlsd: $("$mailtlsd" --version 2>&1 | sed -n 1p)"
echo "machine: $(nproc) CPU(s), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | sed -n 1p)"
echo "refused connections per flood: $n"
for kind in implicit starttls; do
	port=$pimpl
	[ $kind = starttls ] && port=$pstls
	read -r u0 k0 < <(ticks "$mpid")
	s0=$(date +%s.%N)
	replies=$(flood "$port")
	s1=$(date +%s.%N)
	read -r u1 k1 < <(ticks "$mpid")
	awk -v k="$kind" -v u=$((u1 - u0)) -v s=$((k1 - k0)) -v hz="$hz" \
	    -v n="$n" -v w="$(echo "$s1 - $s0" | bc)" -v r="$replies" 'BEGIN {
		printf "refused %-8s cpu_us_per_conn %.1f (user %.1f, " \
		    "sys %.1f)  %d conns in %.1f s; client saw %s\n", k,
		    (u + s) / hz * 1e6 / n, u / hz * 1e6 / n,
		    s / hz * 1e6 / n, n, w, r }'
done
out=$("${pin_load[@]}" "$loadgen" -a "127.0.0.1:$pfull" -p "$mpid" -m full \
    -d "$dur" -w 1)
echo "full handshake: ${out#RESULT }"
