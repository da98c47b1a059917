#!/usr/bin/env bash
# test/fresh-machine.sh [quickstart-then-ci | ci-alone | both]
#
# Runs the README's two commands, exactly as written, on a truly fresh Debian
# bookworm machine: a minimal root made with `debootstrap --variant=minbase
# bookworm` (the tarball that test/integration/test_container.py caches in
# /var/cache/mailtlsd-test, made now if missing or older than 30 days), a
# clean clone of this repository's HEAD (commit first: uncommitted changes
# are not in it) at /root/mailtlsd, and then, as root in that root
# (new mount and PID namespaces, the root made / by pivot_root; the host's
# network, so apt-get reaches the mirror):
#
#   quickstart-then-ci   ./quickstart.sh --check   then   .ci/run
#   ci-alone             .ci/run
#   both (the default)   one after the other, each on its own fresh root
#
# (`--check` is the quickstart in the mode that exits once every listener
# answers, instead of running until Ctrl-C.)  Each command's time and exit
# status is printed; the whole output goes to a log next to the roots.
#
# When to run it: before resolving any issue that changes dependencies
# (.ci/run's package list, quickstart.sh, the build), and say in the closing
# note that you did and how long each command took.  It is not part of CI:
# it runs CI twice over (an hour or more on 2 cores).
#
# Everything runs inside as on a real machine, the container test too: its
# dockerd (--bridge=none, --network host containers) works in the root,
# which is why the root is made / with pivot_root (in a chroot, `docker
# exec` would run in the host's /) and /sys and /dev are the host's.  The roots share the host's network, so their loopback tests
# pick free ports like any other test.
#
# Environment:
#   FRESH_MACHINE_DIR   where the roots and logs go (default /var/tmp); each
#                       root is removed after its run unless FRESH_KEEP=1
#   FRESH_APT_CACHE     a directory shared as /var/cache/apt/archives by the
#                       roots so that the second run downloads nothing again
#                       (default $MAILTLSD_TEST_CACHE/fresh-apt; "no" for none)
#   MAILTLSD_TEST_CACHE the debootstrap tarball cache (default
#                       /var/cache/mailtlsd-test), also lent to the roots'
#                       container test
#   MAILTLSD_TEST_DEBIAN_MIRROR  the mirror debootstrap uses
set -euo pipefail

# All in one function, read whole before it runs: editing this file while it
# runs (it takes a while) cannot derail it.
main() {
	src=$(cd "$(dirname "$0")/.." && pwd)
	which=${1:-both}
	case $which in
	quickstart-then-ci | ci-alone | both) ;;
	*)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
		exit 2
		;;
	esac

	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			exec sudo --preserve-env=FRESH_MACHINE_DIR,FRESH_APT_CACHE,FRESH_KEEP,MAILTLSD_TEST_CACHE,MAILTLSD_TEST_DEBIAN_MIRROR \
				"$src/test/fresh-machine.sh" "$@"
		fi
		echo "fresh-machine.sh: must run as root (debootstrap, namespaces)" >&2
		exit 1
	fi
	for t in debootstrap unshare pivot_root git tar python3; do
		command -v $t >/dev/null 2>&1 || [ -x /usr/sbin/$t ] || {
			echo "fresh-machine.sh: $t is missing (.ci/run installs it)" >&2
			exit 1
		}
	done

	cache=${MAILTLSD_TEST_CACHE:-/var/cache/mailtlsd-test}
	workdir=${FRESH_MACHINE_DIR:-/var/tmp}
	aptcache=${FRESH_APT_CACHE:-$cache/fresh-apt}
	head=$(git -C "$src" rev-parse HEAD)
	if [ -n "$(git -C "$src" status --porcelain --untracked-files=no)" ]; then
		echo "fresh-machine.sh: note: uncommitted changes are not tested" \
			"(the clone is of HEAD $head)" >&2
	fi

	say() { printf '[fresh-machine] %s\n' "$*"; }

	# The base root: test_container.py's cached debootstrap tarball.
	say "base root: debootstrap --variant=minbase bookworm (cached in $cache)"
	tar=$(MAILTLSD_TEST_CACHE=$cache PYTHONPATH="$src/test/helpers:$src/test/integration" \
		python3 -c 'import test_container as t; print(t.rootfs_tarball())' |
		tail -n 1)
	[ -f "$tar" ] || { say "no rootfs tarball ($tar)"; exit 1; }

	# scenario NAME COMMAND...: a fresh root, the clone, the commands in order
	# (stopping at the first that fails).
	scenario() {
		local name=$1
		shift
		local base root log rc=0
		base=$(mktemp -d "$workdir/mailtlsd-fresh-$name.XXXXXX")
		root=$base/root
		log=$base.log
		mkdir "$root"
		say "$name: fresh root $root (log $log)"
		tar -C "$root" --numeric-owner -xf "$tar"
		cp /etc/resolv.conf "$root/etc/resolv.conf"
		[ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
		git clone -q --no-checkout "$src" "$root/root/mailtlsd"
		git -C "$root/root/mailtlsd" checkout -q "$head"
		local binds=()
		if [ "$aptcache" != no ]; then
			mkdir -p "$aptcache/partial" "$root/var/cache/apt/archives"
			binds+=("$aptcache:/var/cache/apt/archives")
		fi
		mkdir -p "$cache" "$root/var/cache/mailtlsd-test"
		binds+=("$cache:/var/cache/mailtlsd-test")

		# The commands, timed, inside the root.
		{
			echo 'cd /root/mailtlsd'
			for c in "$@"; do
				printf 'say() { printf "[fresh-machine] %%s\\n" "$*" | tee -a /dev/fd/3; }\n'
				printf 't0=$(date +%%s); say %q\n' "$name: \$ $c"
				printf 'rc=0; %s </dev/null || rc=$?\n' "$c"
				printf 'say "%s: %s: exit $rc after $(( $(date +%%s) - t0 ))s"\n' "$name" "$c"
				printf '[ $rc -eq 0 ] || exit $rc\n'
			done
		} >"$root/fresh-machine-run.sh"

		local bind_cmds=""
		for b in "${binds[@]}"; do
			bind_cmds+="mount --bind '${b%%:*}' '$root${b#*:}'; "
		done
		# The fresh root becomes / of a mount namespace of its own by
		# pivot_root, not chroot: a chrooted dockerd's `docker exec` would
		# run in the host's / (setns(2) starts from the namespace's root
		# mount), so the container test's health check could not run.
		# /proc of the new PID namespace; the host's /sys and /dev.
		unshare --mount --pid --fork --kill-child --propagation private -- \
			bash -c "set -e
				mount --bind '$root' '$root'
				mount -t proc proc '$root/proc'
				mount --rbind /sys '$root/sys'
				mount --rbind /dev '$root/dev'
				mount -t tmpfs -o mode=0755 tmpfs '$root/run'
				$bind_cmds
				mkdir -p '$root/.old-root'
				cd '$root'
				pivot_root . .old-root
				cd /
				umount -l /.old-root
				rmdir /.old-root
				exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
					TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
					bash /fresh-machine-run.sh" 3>&1 >"$log" 2>&1 || rc=$?
		if [ $rc -ne 0 ]; then
			say "$name: FAILED (exit $rc); the end of $log:"
			tail -n 60 "$log"
		else
			say "$name: passed"
		fi
		if [ "${FRESH_KEEP:-}" = 1 ]; then
			say "$name: root kept in $root"
		else
			# nothing is mounted there any more: the namespace is gone
			if grep -qF " $root" /proc/self/mounts; then
				say "$name: something is still mounted under $root: left in place"
			else
				rm -rf "$base"
			fi
		fi
		return $rc
	}

	status=0
	if [ "$which" = quickstart-then-ci ] || [ "$which" = both ]; then
		scenario quickstart-then-ci "./quickstart.sh --check" ".ci/run" ||
			status=1
	fi
	if [ "$which" = ci-alone ] || [ "$which" = both ]; then
		scenario ci-alone ".ci/run" || status=1
	fi
	exit $status
}

main "$@"
