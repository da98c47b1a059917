#!/usr/bin/env bash
# Install what mailtlsd needs (Debian, as root), build it, and run it in the
# foreground with examples/quickstart.conf.  Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends build-essential cmake \
	pkg-config libgnutls28-dev libuv1-dev libinih-dev
cmake -S . -B build -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
exec build/mailtlsd -c examples/quickstart.conf
