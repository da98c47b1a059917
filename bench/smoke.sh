#!/usr/bin/env bash
# The benchmark's smoke test (ctest label "bench"): run bench/compare.sh
# quickly (-q) so that every load generator mode, the backend and the peer
# configurations keep working.  It checks that each mode completes and
# prints numbers, and that every mail session's message crossed the proxy
# intact (loadgen and the backend compare every octet); it asserts nothing
# about speed.  Peers that are not
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

# Every measured proxy has a number for every opaque scenario's main metric
# (relay, mailtlsd's own protocol = none twin, runs the mail scenarios only).
status=0
proxies=$(cut -d' ' -f1 "$work/results.txt" | sort -u)
has() {	# proxy scenario key regex
	grep -Eq "^$1 $2 $3 $4$" "$work/results.txt"
}
for p in $proxies; do
	[ "$p" = relay ] && continue
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

# Mail scenarios: every session was checked octet for octet by the load
# generator and the backend (any difference fails the run), so a run that
# completed with sessions verified and no error is a correct transfer.
num='[0-9]+(\.[0-9]+)?'
for p in mailtlsd relay haproxy; do
	case " $proxies " in *" $p "*) ;; *) continue ;; esac
	for s in smtp-1m smtp-10m stls-1m stls-10m imap-1m imap-10m \
	    imap-search pop3-1m pop3-10m setup-implicit setup-stls \
	    idle-smtp idle-stls idle-btls; do
		# Which proxy runs what: compare.sh's runs().
		case $p:$s in
		relay:setup-stls | relay:idle-* | haproxy:stls-* | \
		    haproxy:setup-stls | haproxy:idle-*) continue ;;
		esac
		if ! has "$p" "$s" status ok; then
			echo "smoke: $p $s did not complete" >&2
			status=1
			continue
		fi
		case $s in
		idle-*)
			has "$p" "$s" alive 50 && has "$p" "$s" errors 0 ||
			    { echo "smoke: $p $s: not every idle session" \
			    "survived" >&2; status=1; } ;;
		*)
			if ! has "$p" "$s" errors 0 ||
			    ! has "$p" "$s" warmup_errors 0 ||
			    ! has "$p" "$s" verified '[1-9][0-9]*'; then
				echo "smoke: $p $s: no verified session or" \
				    "errors" >&2
				status=1
			fi
			case $s in
			setup-*) k=cpu_us_per_op ;;
			imap-search) k=ops_per_s ;;
			*) k=mb_per_s ;;
			esac
			has "$p" "$s" $k "$num" ||
			    { echo "smoke: no number for $p $s $k" >&2
			    status=1; } ;;
		esac
	done
done
exit $status
