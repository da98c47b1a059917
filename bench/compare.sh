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
# Mail scenarios (bench/backend -P smtp|imap|pop3 behind the proxy, loadgen
# -x speaking the protocol and checking every message octet) run through
# mailtlsd's smtp, imap and pop3 listeners, and side by side through
# "relay": the same mailtlsd with protocol = none listeners in front of the
# same mail backends (the same bytes, opaque), and HAProxy where it can do
# the same job (implicit TLS to a plaintext backend); hitch and stunnel run
# the opaque scenarios only.
#   smtp-1m smtp-10m   SMTP session: EHLO, MAIL SIZE=, RCPT, DATA of a 1 MB /
#                      10 MB message in 78-column lines, QUIT (implicit TLS)
#   stls-1m stls-10m   the same on a STARTTLS listener (relay: implicit)
#   imap-1m imap-10m   IMAP LOGIN, SELECT, FETCH of a 1 MB / 10 MB literal
#   imap-search        IMAP session whose SEARCH reply is a 100 KB line
#   pop3-1m pop3-10m   POP3 USER, PASS, RETR of the same messages
#   setup-implicit     SMTP: handshake, greeting, EHLO, QUIT
#   setup-stls         SMTP: greeting, EHLO, STARTTLS, handshake, (fresh
#                      backend), EHLO, QUIT
#   idle-smtp idle-stls idle-btls   memory per idle SMTP session after EHLO:
#                      implicit, STARTTLS after the upgrade, and implicit
#                      with backend_tls = implicit (to a second mailtlsd)
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
#   -s  scenarios (default: all); "opaque" and "mail" name the two groups
#   -q  quick: one repetition of half a second each, 50 idle connections,
#       messages of 200 kB and 1 MB for "1m" and "10m" (the CI smoke test,
#       under sanitizers too); the numbers mean nothing then, but every mail
#       session in flight when the window closes runs to its end and is
#       checked.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$here/../build}
reps=3
dur=5
warm=1
idle_n=2000
workers=1
proxies="mailtlsd haproxy hitch stunnel"
opaque_scenarios="full resumed upload download idle pingpong"
mail_scenarios="smtp-1m smtp-10m stls-1m stls-10m imap-1m imap-10m imap-search
pop3-1m pop3-10m setup-implicit setup-stls idle-smtp idle-stls idle-btls"
scenarios="$opaque_scenarios $mail_scenarios"
results=""
base_port=${BENCH_PORT:-24400}
msg1m=1000000
msg10m=10000000

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
	q) reps=1 dur=0.5 warm=0.2 idle_n=50 msg1m=200000 msg10m=1000000 ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 2 ;;
	esac
done
scenarios=$(echo $scenarios | sed "s/\bopaque\b/$opaque_scenarios/; s/\bmail\b/$(echo $mail_scenarios)/")

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
	mailtlsd) have+=("$p" relay) ;;
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
mail_pids=""
proxy_pid=""
cleanup() {
	[ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
	[ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null || true
	for pid in $mail_pids; do kill "$pid" 2>/dev/null || true; done
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
# Mail backends, and a second mailtlsd as the TLS backend of idle-btls.
smtp_bport=$((base_port + 5))
imap_bport=$((base_port + 6))
pop3_bport=$((base_port + 7))
tlsback_port=$((base_port + 20))
port_of() {
	case $1 in
	mailtlsd) echo $((base_port + 1)) ;;
	haproxy) echo $((base_port + 2)) ;;
	hitch) echo $((base_port + 3)) ;;
	stunnel) echo $((base_port + 4)) ;;
	relay) echo $((base_port + 14)) ;;
	esac
}

is_mail() {
	case $1 in
	smtp-* | stls-* | imap-* | pop3-* | setup-* | idle-?*) return 0 ;;
	*) return 1 ;;
	esac
}

# Does proxy $1 run scenario $2?  relay and HAProxy do what needs no
# parsing (relay runs the implicit session for stls-*: the same message,
# opaque); hitch and stunnel the opaque scenarios only.
runs() {
	local p=$1 s=$2
	if ! is_mail "$s"; then
		[ "$p" != relay ]
		return
	fi
	case $p:$s in
	mailtlsd:*) return 0 ;;
	relay:setup-stls | relay:idle-* | haproxy:stls-* | haproxy:setup-stls | \
	    haproxy:idle-*) return 1 ;;
	relay:* | haproxy:*) return 0 ;;
	*) return 1 ;;
	esac
}

# The port proxy $1 listens on for scenario $2.
scen_port() {
	local p=$1 s=$2
	if ! is_mail "$s"; then
		port_of "$p"
		return
	fi
	case $p:$s in
	mailtlsd:smtp-* | mailtlsd:setup-implicit | mailtlsd:idle-smtp)
		echo $((base_port + 10)) ;;
	mailtlsd:stls-* | mailtlsd:setup-stls | mailtlsd:idle-stls)
		echo $((base_port + 11)) ;;
	mailtlsd:imap-*) echo $((base_port + 12)) ;;
	mailtlsd:pop3-*) echo $((base_port + 13)) ;;
	mailtlsd:idle-btls) echo $((base_port + 17)) ;;
	relay:smtp-* | relay:stls-* | relay:setup-*) echo $((base_port + 14)) ;;
	relay:imap-*) echo $((base_port + 15)) ;;
	relay:pop3-*) echo $((base_port + 16)) ;;
	haproxy:smtp-* | haproxy:setup-*) echo $((base_port + 22)) ;;
	haproxy:imap-*) echo $((base_port + 23)) ;;
	haproxy:pop3-*) echo $((base_port + 24)) ;;
	esac
}

# The load generator's arguments for scenario $2 through proxy $1.
scen_args() {
	local p=$1 s=$2 tls=""
	case $p:$s in
	mailtlsd:stls-* | mailtlsd:setup-stls | mailtlsd:idle-stls) tls=-T ;;
	esac
	case $s in
	idle) echo -m idle -n "$idle_n" -H 1 ;;
	smtp-1m | stls-1m) echo -m session -x smtp $tls -M $msg1m -c 2 ;;
	smtp-10m | stls-10m) echo -m session -x smtp $tls -M $msg10m -c 2 ;;
	imap-1m) echo -m session -x imap -M $msg1m -c 2 ;;
	imap-10m) echo -m session -x imap -M $msg10m -c 2 ;;
	imap-search) echo -m search -x imap -M 100000 -c 2 ;;
	pop3-1m) echo -m session -x pop3 -M $msg1m -c 2 ;;
	pop3-10m) echo -m session -x pop3 -M $msg10m -c 2 ;;
	setup-*) echo -m session -x smtp $tls -M 0 -c 16 ;;
	idle-*) echo -m idle -x smtp $tls -n "$idle_n" -H 1 ;;
	*) echo -m "$s" ;;
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
# The mail listeners, and the same backends behind protocol = none.
mail_listener() {	# name offset protocol client_tls backend_port [extra]
	cat <<EOF

[$1]
listen = 127.0.0.1:$((base_port + $2))
protocol = $3
client_tls = $4
backend = 127.0.0.1:$5
cert = $work/cert.pem
key = $work/key.pem
max_connections = 20000
EOF
	[ -z "${6:-}" ] || printf '%s\n' "$6"
}
{
	mail_listener smtp 10 smtp implicit "$smtp_bport"
	mail_listener smtp-starttls 11 smtp starttls "$smtp_bport"
	mail_listener imap 12 imap implicit "$imap_bport"
	mail_listener pop3 13 pop3 implicit "$pop3_bport"
	mail_listener relay-smtp 14 none implicit "$smtp_bport"
	mail_listener relay-imap 15 none implicit "$imap_bport"
	mail_listener relay-pop3 16 none implicit "$pop3_bport"
	mail_listener smtp-backend-tls 17 smtp implicit "$tlsback_port" \
		"$(printf 'backend_tls = implicit\nbackend_verify = no')"
} >>"$work/mailtlsd.conf"

# The TLS backend for idle-btls: another mailtlsd, not the one measured.
cat >"$work/tlsback.conf" <<EOF
[global]
workers = 1
log_level = error
shutdown_timeout = 1s
EOF
mail_listener tlsback 20 smtp implicit "$smtp_bport" >>"$work/tlsback.conf"

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
for m in smtp:22:$smtp_bport imap:23:$imap_bport pop3:24:$pop3_bport; do
	IFS=: read -r name off bp <<<"$m"
	cat >>"$work/haproxy.cfg" <<EOF

frontend fe_$name
	bind 127.0.0.1:$((base_port + off)) ssl crt $work/combined.pem
	default_backend be_$name

backend be_$name
	server s1 127.0.0.1:$bp
EOF
done

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
	mailtlsd | relay) $pin_proxy "$mailtlsd" -c "$work/mailtlsd.conf" \
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
	port=$(scen_port "$p" "$s")
	read -r -a args <<<"$(scen_args "$p" "$s")"
	case $s in
	idle*) ;;
	*) args+=(-d "$dur" -w "$warm") ;;
	esac
	start_proxy "$p" || return 1
	if ! out=$($pin_load "$loadgen" -a "127.0.0.1:$port" -p "$proxy_pid" \
	    "${args[@]}" 2>"$work/loadgen.err"); then
		stop_proxy
		echo "compare.sh: $p $s: loadgen failed:" >&2
		cat "$work/loadgen.err" >&2
		echo "$out" >&2
		echo "$p $s status failed" >>"$results"
		return 1
	fi
	stop_proxy
	echo "  $p: $out" | sed 's/RESULT //' >&2
	echo "$p $s status ok" >>"$results"
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
echo "runs: $reps repetition(s), ${dur}s each after ${warm}s warm-up; idle: $idle_n connections; messages: $msg1m and $msg10m octets"

$pin_load "$backend" "127.0.0.1:$bport" >"$work/backend.out" 2>&1 &
backend_pid=$!
wait_port "$bport" || { echo "compare.sh: backend did not start" >&2; exit 1; }
# Mail backends and the TLS backend, only if a mail scenario runs.
for s in $scenarios; do
	is_mail "$s" || continue
	for m in smtp:$smtp_bport imap:$imap_bport pop3:$pop3_bport; do
		$pin_load "$backend" -P "${m%%:*}" "127.0.0.1:${m#*:}" \
			>"$work/backend-${m%%:*}.out" 2>&1 &
		mail_pids="$mail_pids $!"
		wait_port "${m#*:}" || { echo "compare.sh: mail backend" \
			"${m%%:*} did not start" >&2; exit 1; }
	done
	$pin_load "$mailtlsd" -c "$work/tlsback.conf" 2>"$work/tlsback.log" &
	mail_pids="$mail_pids $!"
	wait_port "$tlsback_port" || { echo "compare.sh: the TLS backend" \
		"did not start:" >&2; cat "$work/tlsback.log" >&2; exit 1; }
	break
done

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
			runs "$p" "$s" || continue
			run_one "$p" "$s" || failed=1
		done
	done
done

echo "==== results (median of $reps; ratio = mailtlsd / peer) ===="
# mailtlsd first, then its own relay: the ratios are mailtlsd over each.
table=()
for p in "${have[@]}"; do [ "$p" = mailtlsd ] && table+=("$p"); done
for p in "${have[@]}"; do [ "$p" = relay ] && table+=("$p"); done
for p in "${have[@]}"; do
	[ "$p" = mailtlsd ] || [ "$p" = relay ] || table+=("$p")
done
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
function med(p, s, k) { return median(v[p " " s " " k]) }
function target(what, x, t) {
	printf "  %-44s %6.2fx  (target <= %.2fx: %s)\n", what, x, t,
	    x <= t ? "met" : "NOT met"
}
$3 == "status" { st[$1 " " $2] = $4; next }
{ v[$1 " " $2 " " $3] = v[$1 " " $2 " " $3] " " $4 }
END {
	np = split(proxies, P, " ")
	m["full"] = "cpu_us_per_op ops_per_s errors"
	m["resumed"] = "cpu_us_per_op ops_per_s not_resumed errors"
	m["upload"] = "mb_per_cpu_s mb_per_s"
	m["download"] = "mb_per_cpu_s mb_per_s"
	m["idle"] = "kb_per_conn alive errors"
	m["pingpong"] = "p50_us p99_us cpu_us_per_op"
	split("smtp-1m smtp-10m stls-1m stls-10m imap-1m imap-10m pop3-1m " \
	    "pop3-10m", D, " ")
	for (i in D) m[D[i]] = "cpu_us_per_mb cpu_us_per_op mb_per_s errors"
	m["imap-search"] = "cpu_us_per_op ops_per_s errors"
	m["setup-implicit"] = "cpu_us_per_op ops_per_s errors"
	m["setup-stls"] = "cpu_us_per_op ops_per_s errors"
	m["idle-smtp"] = m["idle-stls"] = m["idle-btls"] = \
	    "kb_per_conn alive errors"
	printf "%-14s %-14s", "scenario", "metric"
	for (i = 1; i <= np; i++) printf " %10s", P[i]
	for (i = 2; i <= np; i++) printf " %11s", "/" P[i]
	printf "\n"
	ns = split(scen, S, " ")
	for (k = 1; k <= ns; k++) {
		nk = split(m[S[k]], K, " ")
		for (j = 1; j <= nk; j++) {
			printf "%-14s %-14s", S[k], K[j]
			for (i = 1; i <= np; i++) {
				md[i] = med(P[i], S[k], K[j])
				if (md[i] == "")
					cell = "-"
				else
					cell = sprintf("%.1f", md[i])
				printf " %10s", cell
			}
			for (i = 2; i <= np; i++) {
				if (K[j] ~ /errors|alive|resumed|ops_per_s|mb_per_s$/ ||
				    md[1] == "" || md[i] == "" || md[i] + 0 == 0)
					printf " %11s", ""
				else
					printf " %11.2f", md[1] / md[i]
			}
			printf "\n"
		}
	}
	print "(lower is better for cpu_us_per_op, cpu_us_per_mb, kb_per_conn and latency; higher for mb_per_cpu_s)"
	# The targets of issue 18, where both figures were measured.
	hdr = 0
	for (k = 1; k <= ns; k++) {
		a = med("mailtlsd", S[k], "cpu_us_per_mb")
		b = med("relay", S[k], "cpu_us_per_mb")
		if (m[S[k]] !~ /cpu_us_per_mb/ || a == "" || b == "" ||
		    b + 0 == 0) continue
		if (!hdr++) print "targets:"
		target("CPU per MB, " S[k] " / protocol = none relay", a / b, 1.15)
	}
	a = med("mailtlsd", "setup-stls", "cpu_us_per_op")
	b = med("mailtlsd", "setup-implicit", "cpu_us_per_op")
	if (a != "" && b != "" && b + 0 > 0) {
		if (!hdr++) print "targets:"
		target("CPU per session set-up, STARTTLS / implicit", a / b, 1.5)
	}
}' "$results"
if [ "$failed" -ne 0 ]; then
	echo "compare.sh: some runs failed (see above)" >&2
	exit 1
fi
