#!/usr/bin/env bash
# quickstart.sh: install what mailtlsd needs (Debian), build it in
# build-quickstart/ (the tests build elsewhere) and run it in the foreground.
#
#   ./quickstart.sh           mailtlsd with examples/quickstart.conf: loopback
#                             high ports, cert = auto, backends on this
#                             machine's ports 25, 143 and 110.  Ctrl-C stops it.
#   ./quickstart.sh --demo    the same listeners in front of a throw-away
#                             Postfix and Dovecot (loopback high ports, a
#                             temporary directory, user demo / password demo),
#                             and the commands that send a message through
#                             mailtlsd and read it back.  Ctrl-C stops
#                             everything and removes the temporary directory.
#                             Needs root (Postfix's master starts as root);
#                             nothing installed system-wide is started or
#                             reconfigured.
#   --check                   with either: exit 0 as soon as every listener
#                             (and, with --demo, every server) answers, after
#                             stopping everything (for scripts and
#                             test/fresh-machine.sh)
#   -c FILE                   another configuration instead of
#                             examples/quickstart.conf (with --demo, its
#                             backend lines are replaced per protocol)
#
# Packages are installed only when missing: as root with apt-get, as a user
# through sudo; without sudo the apt-get line to run is printed.
# MAILTLSD_BIN=PATH runs that binary and skips installing and building
# (the tests use it).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

demo=no
check=no
conf=examples/quickstart.conf
while [ $# -gt 0 ]; do
	case $1 in
	--demo) demo=yes ;;
	--check) check=yes ;;
	-c)
		[ $# -ge 2 ] || { usage >&2; exit 2; }
		conf=$2
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
[ -r "$conf" ] || { echo "quickstart: cannot read $conf" >&2; exit 2; }

say() { printf 'quickstart: %s\n' "$*" >&2; }

# -- packages ---------------------------------------------------------------

# install PKG...: apt-get install the ones that are missing.
install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
			grep -q '^install ok installed$' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=
	if [ "$(id -u)" -ne 0 ]; then
		if ! command -v sudo >/dev/null 2>&1; then
			say "missing packages; as root, run:"
			echo "  apt-get install --no-install-recommends ${missing[*]}" >&2
			exit 1
		fi
		sudo=sudo
	fi
	say "installing ${missing[*]}"
	# The same preseed as .ci/run: Postfix must not ask, nor configure
	# itself; the demo brings its own configuration.
	echo "postfix postfix/main_mailer_type select No configuration" |
		$sudo debconf-set-selections
	# Installing must not start the distribution's Postfix or Dovecot
	# (the demo runs its own instances): a policy-rc.d for the duration of
	# the install, unless the machine already has one.
	local policy=/usr/sbin/policy-rc.d ours=no
	if [ ! -e $policy ]; then
		printf '#!/bin/sh\n# quickstart.sh: no service starts while it installs\nexit 101\n' |
			$sudo tee $policy >/dev/null
		$sudo chmod 0755 $policy
		ours=yes
	fi
	local rc=0
	{
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get \
			-o DPkg::Lock::Timeout=600 update -q &&
			$sudo env DEBIAN_FRONTEND=noninteractive apt-get \
				-o DPkg::Lock::Timeout=600 install -y -q \
				--no-install-recommends "${missing[@]}" </dev/null
	} || rc=$?
	[ $ours = yes ] && $sudo rm -f $policy
	[ $rc -eq 0 ] || exit $rc
}

if [ $demo = yes ] && [ "$(id -u)" -ne 0 ]; then
	say "--demo starts Postfix, whose master process runs as root: run it as root (sudo ./quickstart.sh --demo)"
	exit 1
fi

if [ -n "${MAILTLSD_BIN:-}" ]; then
	bin=$MAILTLSD_BIN
else
	install build-essential cmake pkg-config libgnutls28-dev libuv1-dev \
		libinih-dev
	cmake -S . -B build-quickstart -DBUILD_TESTING=OFF -DBUILD_BENCH=OFF \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build-quickstart -j"$(nproc)"
	bin=build-quickstart/mailtlsd
fi
if [ $demo = yes ]; then
	install postfix dovecot-imapd dovecot-pop3d curl ca-certificates
fi

# -- the configuration -----------------------------------------------------

# values KEY FILE: every value of KEY in FILE (comments cut), in file order.
values() {
	sed -n -E "s/^[[:space:]]*$1[[:space:]]*[=:][[:space:]]*([^[:space:];#]+).*/\\1/p" \
		"$2"
}

# answers HOST:PORT: something accepts a TCP connection there.
answers() {
	local host=${1%:*} port=${1##*:}
	host=${host#[}
	host=${host%]}
	[ "$host" = 0.0.0.0 ] && host=127.0.0.1
	[ "$host" = "::" ] && host=::1
	timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# wait_all PID ADDR...: until every ADDR answers (30 s at most), while PID
# runs.
wait_all() {
	local pid=$1 a i
	shift
	for a in "$@"; do
		for ((i = 0; i < 300; i++)); do
			kill -0 "$pid" 2>/dev/null || return 1
			answers "$a" && continue 2
			sleep 0.1
		done
		say "nothing answers on $a after 30 s"
		return 1
	done
}

pids=()
tmp=
cleanup() {
	set +e
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
		wait "${pids[i]}" 2>/dev/null
	done
	if [ -n "$tmp" ]; then
		if [ -f "$tmp/postfix/etc/main.cf" ]; then
			postfix -c "$tmp/postfix/etc" stop >/dev/null 2>&1
			# postfix stop returns before the master is gone
			for ((i = 0; i < 100; i++)); do
				[ -f "$tmp/postfix/queue/pid/master.pid" ] || break
				kill -0 "$(cat "$tmp/postfix/queue/pid/master.pid")" \
					2>/dev/null || break
				sleep 0.1
			done
		fi
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mapfile -t listens < <(values listen "$conf")
if [ ${#listens[@]} -eq 0 ]; then
	say "$conf has no listen lines"
	exit 2
fi

# -- without --demo: say at once when no backend answers ---------------------

if [ $demo = no ]; then
	mapfile -t backends < <(values backend "$conf" | sort -u)
	dead=()
	for b in "${backends[@]}"; do
		answers "$b" || dead+=("$b")
	done
	if [ ${#dead[@]} -gt 0 ] && [ ${#dead[@]} -eq ${#backends[@]} ]; then
		say "nothing answers on the backend ports (${dead[*]}), so every client will get \"service not available\": run ./quickstart.sh --demo for a throw-away Postfix and Dovecot behind mailtlsd, or set backend = in $conf to your mail server"
	elif [ ${#dead[@]} -gt 0 ]; then
		say "no answer on backend ${dead[*]}: clients of those listeners will get \"service not available\" (./quickstart.sh --demo brings its own Postfix and Dovecot)"
	fi
	if [ $check = no ]; then
		exec "$bin" -c "$conf"
	fi
	"$bin" -c "$conf" &
	pids+=($!)
	wait_all "${pids[0]}" "${listens[@]}" || exit 1
	say "every listener answers: ${listens[*]}"
	kill -TERM "${pids[0]}"
	rc=0
	wait "${pids[0]}" || rc=$?
	pids=()
	exit $rc
fi

# -- --demo: a throw-away Postfix and Dovecot ---------------------------------

# free_from PORT: the first port from PORT up on which nothing answers.
free_from() {
	local p=$1
	while answers "127.0.0.1:$p"; do
		p=$((p + 1))
		[ $p -lt $(($1 + 200)) ] || { say "no free port near $1"; exit 1; }
	done
	echo "$p"
}

tmp=$(mktemp -d /tmp/mailtlsd-demo.XXXXXX)
# Postfix's and Dovecot's unprivileged processes must traverse it.
chmod 0755 "$tmp"
domain=example.org
user=demo
password=demo
addr=$user@$domain
uid=65534
gid=65534
# From a random base, so that two demos started at once (or a demo and
# the test suite) do not both find the same port free before either binds;
# below the kernel's ephemeral range (32768 up), where outgoing connections
# hold ports that cannot be listened on.
base=$((12000 + RANDOM % 200 * 100))
smtp=$(free_from $((base + 25)))
imap=$(free_from $((base + 43)))
pop3=$(free_from $((base + 10)))

mkdir -p "$tmp/mail/$user/new" "$tmp/mail/$user/cur" "$tmp/mail/$user/tmp"
chmod 0700 "$tmp/mail/$user" "$tmp/mail/$user"/*
chown -R $uid:$gid "$tmp/mail"

# Postfix: an instance of its own (as test/helpers/mtd.py RealServers does),
# delivering into a virtual Maildir that Dovecot serves.
pf=$tmp/postfix
mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
chown postfix:postfix "$pf/data"
echo "$addr $user/" >"$pf/etc/vmailbox"
cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.$domain
mydomain = $domain
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = \$myhostname ESMTP (mailtlsd demo Postfix)
smtp_dns_support_level = disabled
disable_dns_lookups = yes
smtpd_peername_lookup = no
biff = no
maillog_file = $pf/maillog
maillog_file_prefixes = /tmp, $pf
virtual_mailbox_domains = $domain
virtual_mailbox_base = $tmp/mail
virtual_mailbox_maps = texthash:$pf/etc/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = 1
smtpd_tls_security_level = none
smtp_tls_security_level = none
EOF
cat >"$pf/etc/master.cf" <<EOF
127.0.0.1:$smtp inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
if ! postfix -c "$pf/etc" start >"$tmp/postfix.out" 2>&1; then
	say "postfix did not start:"
	cat "$tmp/postfix.out" "$pf/maillog" >&2 2>/dev/null
	exit 1
fi

# Dovecot: in the foreground, its own base_dir and state_dir.
dc=$tmp/dovecot
mkdir -p "$dc/run" "$dc/state"
echo "$user:{PLAIN}$password:$uid:$gid::$tmp/mail/$user" >"$dc/passwd"
chmod 0644 "$dc/passwd"
cat >"$dc/dovecot.conf" <<EOF
instance_name = mailtlsd-demo-$(basename "$tmp")
base_dir = $dc/run
state_dir = $dc/state
protocols = imap pop3
listen = 127.0.0.1
log_path = $dc/dovecot.log
info_log_path = $dc/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~
mail_uid = $uid
mail_gid = $gid
first_valid_uid = 1
first_valid_gid = 1
pop3_uidl_format = %08Xu%08Xv
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $dc/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%n $dc/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3
  }
  inet_listener pop3s {
    port = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
dovecot -F -c "$dc/dovecot.conf" </dev/null >"$dc/stdout.log" 2>&1 &
pids+=($!)
if ! wait_all "${pids[0]}" "127.0.0.1:$smtp" "127.0.0.1:$imap" \
	"127.0.0.1:$pop3"; then
	cat "$pf/maillog" "$dc/dovecot.log" "$dc/stdout.log" >&2 2>/dev/null
	exit 1
fi

# mailtlsd: the configuration's listeners, each backend line replaced by the
# demo server of its section's protocol.
awk -v smtp="$smtp" -v imap="$imap" -v pop3="$pop3" '
function flush(   i, l) {
	for (i = 1; i <= n; i++) {
		l = buf[i]
		if (l ~ /^[ \t]*backend[ \t]*[=:]/ && (proto in port))
			l = "backend = 127.0.0.1:" port[proto]
		print l
	}
	n = 0
	proto = ""
}
BEGIN { port["smtp"] = smtp; port["imap"] = imap; port["pop3"] = pop3 }
/^[ \t]*\[/ { flush() }
{
	buf[++n] = $0
	if ($0 ~ /^[ \t]*protocol[ \t]*[=:]/) {
		p = $0
		sub(/^[ \t]*protocol[ \t]*[=:][ \t]*/, "", p)
		sub(/[ \t;#].*$/, "", p)
		proto = p
	}
}
END { flush() }' "$conf" >"$tmp/mailtlsd.conf"

"$bin" -c "$tmp/mailtlsd.conf" &
pids+=($!)
wait_all "${pids[1]}" "${listens[@]}" || exit 1

if [ $check = yes ]; then
	say "every server and listener answers: ${listens[*]}"
	exit 0
fi

# The listener of each kind that the commands below use.
pick() { # pick PROTOCOL CLIENT_TLS: the port of the first such listener
	awk -v want_p="$1" -v want_t="$2" '
	function done() {
		if (p == want_p && t == want_t && l != "" && !found) {
			n = split(l, a, ":"); print a[n]; found = 1
		}
		p = t = l = ""
	}
	/^[ \t]*\[/ { done() }
	/^[ \t]*protocol[ \t]*[=:]/ { v = $0; sub(/^[^=:]*[=:][ \t]*/, "", v); sub(/[ \t;#].*$/, "", v); p = v }
	/^[ \t]*client_tls[ \t]*[=:]/ { v = $0; sub(/^[^=:]*[=:][ \t]*/, "", v); sub(/[ \t;#].*$/, "", v); t = v }
	/^[ \t]*listen[ \t]*[=:]/ { v = $0; sub(/^[^=:]*[=:][ \t]*/, "", v); sub(/[ \t;#].*$/, "", v); l = v }
	END { done() }' "$tmp/mailtlsd.conf"
}
smtps=$(pick smtp implicit)
submission=$(pick smtp starttls)
imaps=$(pick imap implicit)
pop3st=$(pick pop3 starttls)
for v in smtps submission imaps pop3st; do
	[ -n "${!v}" ] || { say "$conf lacks a listener for the demo's $v"; exit 1; }
done

for n in 1 2; do
	how=$([ $n = 1 ] && echo "implicit TLS" || echo "STARTTLS")
	printf 'From: %s\nTo: %s\nSubject: mailtlsd demo %s: over %s\n\nThis message went through mailtlsd (%s) to Postfix.\n' \
		"$addr" "$addr" "$n" "$how" "$how" >"$tmp/message-$n.txt"
done

cat <<EOF

mailtlsd demo: Postfix on 127.0.0.1:$smtp, Dovecot on 127.0.0.1:$imap (IMAP)
and 127.0.0.1:$pop3 (POP3), all in $tmp; mailtlsd in front of them on
${listens[*]}.
User $addr, password $password.  In another terminal (-k: cert = auto is
self-signed):

# 1. send a message over implicit TLS (submissions)
curl -sSk smtps://127.0.0.1:$smtps --mail-from $addr --mail-rcpt $addr -T $tmp/message-1.txt
# 2. send another over STARTTLS (submission; AUTH and MAIL are refused before TLS)
curl -sSk --ssl-reqd smtp://127.0.0.1:$submission --mail-from $addr --mail-rcpt $addr -T $tmp/message-2.txt
# 3. read them back: the first over IMAP (imaps), the second over POP3 (STARTTLS)
curl -sSk 'imaps://127.0.0.1:$imaps/INBOX;UID=1' -u $user:$password && curl -sSk --ssl-reqd pop3://127.0.0.1:$pop3st/2 -u $user:$password

Ctrl-C stops mailtlsd, Postfix and Dovecot and removes $tmp.
EOF

# Until Ctrl-C (the traps clean up), or until a server or mailtlsd exits.
rc=0
wait -n "${pids[@]}" || rc=$?
say "a demo process exited ($rc): stopping"
exit 1
