# mailtlsd container image: a multi-stage build on Debian bookworm.
#
#   docker build -t mailtlsd .
#   docker run -d --name mailtlsd \
#       -v /srv/mailtlsd/conf:/etc/mailtlsd:ro \
#       -v /srv/mailtlsd/certs:/etc/ssl/mailtlsd:ro \
#       -p 465:465 -p 587:587 -p 993:993 -p 995:995 -p 143:143 -p 110:110 \
#       mailtlsd
#
# The process runs as the unprivileged user mailtlsd (uid/gid 10465), in the
# foreground, logging to stderr (`docker logs`).  Configuration comes from
# the volume at /etc/mailtlsd (mailtlsd.conf), certificates and keys from
# the volume at /etc/ssl/mailtlsd; mount directories, not single files, so
# that a renewed certificate written by rename is seen in the container.  The
# configuration needs no `user =` line: the process is never root.
#
# Ports below 1024: in a container with its own network namespace Docker lets
# any user bind them (net.ipv4.ip_unprivileged_port_start = 0).  With
# --network host it does not, so the binary carries the file capability
# cap_net_bind_service and nothing else; the process gains it at exec time
# only if the container's bounding set has it (Docker's default set does;
# with --cap-drop ALL add --cap-add NET_BIND_SERVICE, or the kernel refuses
# to run the binary).  Build with --build-arg NET_BIND_CAP=no for an image
# without the file capability, for high ports only under --cap-drop ALL.
#
# Offline builds: --build-arg BASE=some/local:image replaces the base image of
# both stages (the tests use an image made with debootstrap).

ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------
FROM ${BASE} AS build

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
	build-essential cmake pkg-config \
	libgnutls28-dev libuv1-dev libinih-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY CMakeLists.txt ./
COPY include/ include/
COPY proxy/ proxy/
COPY man/ man/
COPY examples/ examples/
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DBUILD_TESTING=OFF -DBUILD_BENCH=OFF -DCMAKE_INSTALL_PREFIX=/usr \
 && cmake --build /build -j"$(nproc)" \
 && DESTDIR=/out cmake --install /build --strip \
 && /out/usr/sbin/mailtlsd --version

# ---------------------------------------------------------------------------
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
ARG NET_BIND_CAP=yes
# Runtime libraries only (libcap2-bin is removed again below).
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
	libgnutls30 libuv1 libinih1 ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10465 mailtlsd \
 && useradd --uid 10465 --gid mailtlsd --no-create-home \
	--home-dir /nonexistent --shell /usr/sbin/nologin mailtlsd \
 && install -d -m 0755 /etc/mailtlsd /etc/ssl/mailtlsd

COPY --from=build /out/usr/sbin/mailtlsd /usr/sbin/mailtlsd
COPY --from=build /out/usr/share/doc/mailtlsd/examples/ /usr/share/doc/mailtlsd/examples/
COPY docker/mailtlsd-healthcheck /usr/local/bin/mailtlsd-healthcheck
COPY docker/mailtlsd-entrypoint /usr/local/bin/mailtlsd-entrypoint

RUN if [ "$NET_BIND_CAP" = yes ]; then \
	setcap cap_net_bind_service=+ep /usr/sbin/mailtlsd; fi \
 && apt-get purge -y -q --auto-remove libcap2-bin \
 && chmod 0755 /usr/local/bin/mailtlsd-healthcheck \
	/usr/local/bin/mailtlsd-entrypoint \
 && /usr/sbin/mailtlsd --version

ENV MAILTLSD_CONFIG=/etc/mailtlsd/mailtlsd.conf
USER 10465:10465
WORKDIR /
EXPOSE 465 587 993 995 143 110
STOPSIGNAL SIGTERM
# A TCP probe of the listeners, or GET /metrics when `metrics` is set
# (mailtlsd-healthcheck reads $MAILTLSD_CONFIG to find them).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
	CMD ["/usr/local/bin/mailtlsd-healthcheck"]
# The entry point execs /usr/sbin/mailtlsd with the arguments; with
# MAILTLSD_AUTO_CERT=yes (examples/compose) a listener whose certificate or
# key file is missing serves a throw-away self-signed one (cert = auto) and
# the log says so, instead of the start-up error.
ENTRYPOINT ["/usr/local/bin/mailtlsd-entrypoint"]
CMD ["-c", "/etc/mailtlsd/mailtlsd.conf"]
