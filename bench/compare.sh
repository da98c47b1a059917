#!/usr/bin/env bash
# compare.sh: measure mailtlsd against HAProxy, hitch and stunnel (Debian's
# haproxy, hitch and stunnel4 packages; this script installs nothing) with
# equivalent set-ups: the same ECDSA P-256 certificate, TLS 1.3 with
# AES-128-GCM (X25519 key exchange, chosen by the load generator), the same
# worker count, logging off, descriptor limits raised.  Scenarios run
# interleaved (each scenario goes through every proxy in turn, the order
# rotating from one repetition to the next), each run against a freshly
# started proxy, and the table shows medians and the ratio of mailtlsd to
# each peer.
#
# CPU figures are the proxy's own utime+stime (from /proc/PID/stat, its
# child processes included) over the measurement window, divided by the work
# done: on a small machine the load generator competes for the CPU, so
# rates alone would measure the load generator.  With two or more CPUs the
# proxy is pinned to CPU 0 and the load generator and backend to CPU 1.
#
# usage: bench/compare.sh [-b BUILD_DIR] [-r REPS] [-d SECONDS] [-n IDLE_CONNS]
#                         [-w WORKERS] [-p "PROXIES"] [-s "SCENARIOS"]
#                         [-o RESULTS_FILE] [-q]
#   -q  quick: one repetition of half a second each, 50 idle connections (the
#       CI smoke test); the numbers mean nothing then.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$here/../build}
reps=3
dur=5
warm=1
idle_n=2000
workers=1
proxies="mailtlsd haproxy hitch stunnel"
scenarios="full resumed upload download idle pingpong"
results=""
base_port=${BENCH_PORT:-24400}

while getopts "b:r:d:n:w:p:s:o:qh" opt; do
	case $opt in
	b) build=$OPTARG ;;
	r) reps=$OPTARG ;;
	d) dur=$OPTARG ;;
	n) idle_n=$OPTARG ;;
	w) workers=$OPTARG ;;
	p) proxies=$OPTARG ;;
	s) scenarios=$OPTARG ;;
	o) results=$OPTARG ;;
	q) reps=1 dur=0.5 warm=0.2 idle_n=50 ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 2 ;;
	esac
done

mailtlsd=$build/mailtlsd
loadgen=$build/bench/loadgen
backend=$build/bench/backend
for f in "$mailtlsd" "$loadgen" "$backend"; do
	if [ ! -x "$f" ]; then
		echo "compare.sh: $f is missing: build first (cmake --build)" >&2
		exit 1
	fi
done

# Peers that are not installed are left out, loudly.
have=()
for p in $proxies; do
	case $p in
	mailtlsd) have+=("$p") ;;
	haproxy | hitch) if command -v "$p" >/dev/null 2>&1; then
			have+=("$p")
		else
			echo "compare.sh: NOT MEASURED: $p is not installed" \
			    "(apt-get install $p)" >&2
		fi ;;
	stunnel) if command -v stunnel4 >/dev/null 2>&1 ||
		    command -v stunnel >/dev/null 2>&1; then
			have+=("$p")
		else
			echo "compare.sh: NOT MEASURED: stunnel is not" \
			    "installed (apt-get install stunnel4)" >&2
		fi ;;
	*) echo "compare.sh: unknown proxy $p" >&2; exit 2 ;;
	esac
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
work=$(mktemp -d /tmp/mailtlsd-bench.XXXXXX)
[ -n "$results" ] || results=$work/results.txt
: >"$results"
backend_pid=""
proxy_pid=""
cleanup() {
	[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
	[ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# CPU placement: proxy on CPU 0, load generator and backend on CPU 1.
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ] && [ "$workers" -eq 1 ]; then
	pin_proxy="taskset -c 0"
	pin_load="taskset -c 1"
else
	pin_proxy=""
	pin_load=""
fi

# One certificate for everyone: ECDSA P-256.
if command -v certtool >/dev/null 2>&1; then
	certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 \
		--outfile "$work/key.pem" >/dev/null 2>&1
	printf 'cn = bench.test\ndns_name = bench.test\nexpiration_days = 30\ntls_www_server\nsigning_key\n' >"$work/tmpl"
	certtool --generate-self-signed --load-privkey "$work/key.pem" \
		--template "$work/tmpl" --outfile "$work/cert.pem" >/dev/null 2>&1
else
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$work/key.pem" -out "$work/cert.pem" -days 30 \
		-subj /CN=bench.test >/dev/null 2>&1
fi
cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"

bport=$base_port
port_of() {
	case $1 in
	mailtlsd) echo $((base_port + 1)) ;;
	haproxy) echo $((base_port + 2)) ;;
	hitch) echo $((base_port + 3)) ;;
	stunnel) echo $((base_port + 4)) ;;
	esac
}

cat >"$work/mailtlsd.conf" <<EOF
[global]
workers = $workers
log_level = error
shutdown_timeout = 1s

[bench]
listen = 127.0.0.1:$(port_of mailtlsd)
protocol = none
client_tls = implicit
backend = 127.0.0.1:$bport
cert = $work/cert.pem
key = $work/key.pem
max_connections = 20000
EOF

cat >"$work/haproxy.cfg" <<EOF
global
	nbthread $workers
	maxconn $(((nofile - 200) / 2))
	ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
	ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
	mode tcp
	timeout connect 5s
	timeout client 10m
	timeout server 10m

frontend fe
	bind 127.0.0.1:$(port_of haproxy) ssl crt $work/combined.pem
	default_backend be

backend be
	server s1 127.0.0.1:$bport
EOF

mkdir -p "$work/ocsp"
cat >"$work/hitch.conf" <<EOF
frontend = "[127.0.0.1]:$(port_of hitch)"
backend = "[127.0.0.1]:$bport"
pem-file = "$work/combined.pem"
tls-protos = TLSv1.3
ciphersuites = "TLS_AES_128_GCM_SHA256"
workers = $workers
backlog = 4096
daemon = off
quiet = on
syslog = off
log-level = 0
ocsp-dir = "$work/ocsp"
EOF
# hitch refuses to run its workers as root.
if [ "$(id -u)" -eq 0 ]; then
	printf 'user = "nobody"\ngroup = "nogroup"\n' >>"$work/hitch.conf"
	chmod 755 "$work"
	chown nobody "$work/ocsp"
fi

cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 0
syslog = no
output = /dev/null

[bench]
accept = 127.0.0.1:$(port_of stunnel)
connect = 127.0.0.1:$bport
cert = $work/combined.pem
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF

listening() {
	ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

wait_port() {
	local i
	for i in $(seq 1 200); do
		listening "$1" && return 0
		sleep 0.05
	done
	return 1
}

start_proxy() {
	local p=$1 port
	port=$(port_of "$p")
	case $p in
	mailtlsd) $pin_proxy "$mailtlsd" -c "$work/mailtlsd.conf" \
		2>"$work/$p.log" & ;;
	haproxy) $pin_proxy haproxy -db -f "$work/haproxy.cfg" \
		>"$work/$p.log" 2>&1 & ;;
	hitch) $pin_proxy hitch --config="$work/hitch.conf" \
		>"$work/$p.log" 2>&1 & ;;
	stunnel) $pin_proxy "$(command -v stunnel4 || command -v stunnel)" \
		"$work/stunnel.conf" >"$work/$p.log" 2>&1 & ;;
	esac
	proxy_pid=$!
	if ! wait_port "$port"; then
		echo "compare.sh: $p did not start:" >&2
		cat "$work/$p.log" >&2
		return 1
	fi
}

stop_proxy() {
	kill "$proxy_pid" 2>/dev/null || true
	wait "$proxy_pid" 2>/dev/null || true
	proxy_pid=""
	# The next proxy starts on a quiet machine.
	sleep 0.2
}

run_one() {
	local p=$1 s=$2 port out args
	port=$(port_of "$p")
	case $s in
	idle) args=(-m idle -n "$idle_n" -H 1) ;;
	*) args=(-m "$s" -d "$dur" -w "$warm") ;;
	esac
	start_proxy "$p" || return 1
	if ! out=$($pin_load "$loadgen" -a "127.0.0.1:$port" -p "$proxy_pid" \
	    "${args[@]}" 2>"$work/loadgen.err"); then
		echo "compare.sh: $p $s: loadgen failed:" >&2
		cat "$work/loadgen.err" >&2
		echo "$out" >&2
		stop_proxy
		return 1
	fi
	stop_proxy
	echo "  $p: $out" | sed 's/RESULT //' >&2
	echo "$out" | tr ' ' '\n' | grep = |
		sed "s/^/$p $s /; s/=/ /" >>"$results"
}

# Versions: sed reads everything, so that no writer dies of SIGPIPE (which
# pipefail would turn into an exit).
echo "==== machine ===="
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $ncpu CPUs; kernel $(uname -r)"
echo "memory: $(free -m | awk '/^Mem:/ {print $2}') MiB; nofile $nofile"
echo "mailtlsd: $("$mailtlsd" --version 2>&1 | sed -n 1p)"
for p in "${have[@]}"; do
	case $p in
	haproxy) haproxy -v 2>&1 | sed -n 1p ;;
	hitch) hitch --version 2>&1 | sed -n 1p ;;
	stunnel) "$(command -v stunnel4 || command -v stunnel)" -version 2>&1 |
		sed -n '/^stunnel/{p;q}' || true ;;
	esac
done
echo "workers: $workers; placement: ${pin_proxy:-none} (proxy), ${pin_load:-none} (load)"
echo "runs: $reps repetition(s), ${dur}s each after ${warm}s warm-up; idle: $idle_n connections"

$pin_load "$backend" "127.0.0.1:$bport" >"$work/backend.out" 2>&1 &
backend_pid=$!
wait_port "$bport" || { echo "compare.sh: backend did not start" >&2; exit 1; }

failed=0
echo "==== runs ====" >&2
for r in $(seq 1 "$reps"); do
	# Rotate the order so that no proxy always runs first (A B, B A, ...).
	n=${#have[@]}
	order=()
	for i in $(seq 0 $((n - 1))); do
		order+=("${have[$(((i + r - 1) % n))]}")
	done
	for s in $scenarios; do
		echo "rep $r/$reps, $s:" >&2
		for p in "${order[@]}"; do
			run_one "$p" "$s" || failed=1
		done
	done
done

echo "==== results (median of $reps; ratio = mailtlsd / peer) ===="
# mailtlsd first: the ratios are mailtlsd over each of the others.
table=()
for p in "${have[@]}"; do [ "$p" = mailtlsd ] && table+=("$p"); done
for p in "${have[@]}"; do [ "$p" = mailtlsd ] || table+=("$p"); done
awk -v proxies="${table[*]}" -v scen="$scenarios" '
function median(list,   n, a, i, j, t) {
	n = split(list, a, " ")
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
	if (n == 0) return ""
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}
{ v[$1 " " $2 " " $3] = v[$1 " " $2 " " $3] " " $4 }
END {
	np = split(proxies, P, " ")
	m["full"] = "cpu_us_per_op ops_per_s errors"
	m["resumed"] = "cpu_us_per_op ops_per_s not_resumed errors"
	m["upload"] = "mb_per_cpu_s mb_per_s"
	m["download"] = "mb_per_cpu_s mb_per_s"
	m["idle"] = "kb_per_conn alive errors"
	m["pingpong"] = "p50_us p99_us cpu_us_per_op"
	printf "%-9s %-14s", "scenario", "metric"
	for (i = 1; i <= np; i++) printf " %10s", P[i]
	for (i = 2; i <= np; i++) printf " %11s", "/" P[i]
	printf "\n"
	ns = split(scen, S, " ")
	for (k = 1; k <= ns; k++) {
		nk = split(m[S[k]], K, " ")
		for (j = 1; j <= nk; j++) {
			printf "%-9s %-14s", S[k], K[j]
			for (i = 1; i <= np; i++) {
				med[i] = median(v[P[i] " " S[k] " " K[j]])
				printf " %10s", med[i] == "" ? "-" : sprintf("%.1f", med[i])
			}
			for (i = 2; i <= np; i++) {
				if (K[j] ~ /errors|alive|resumed|ops_per_s|mb_per_s$/ ||
				    med[1] == "" || med[i] == "" || med[i] + 0 == 0)
					printf " %11s", ""
				else
					printf " %11.2f", med[1] / med[i]
			}
			printf "\n"
		}
	}
	print "(lower is better for cpu_us_per_op, kb_per_conn and latency; higher for mb_per_cpu_s)"
}' "$results"
if [ "$failed" -ne 0 ]; then
	echo "compare.sh: some runs failed (see above)" >&2
	exit 1
fi
