/*
 * conn_log: the one line a session leaves when it closes.
 */
#include "conn_int.h"
#include "conn_log.h"
#include "log.h"

static const char *const phase_names[] = {
	"proxy_header", "handshake", "connecting", "backend_starttls",
	"backend_tls", "relay", "starttls", "starttls_handshake", "closing",
};

void
conn_log_close(struct conn *c)
{
	struct log_field f[20];
	size_t n = 0;
	uint64_t to_backend = c->client.bytes;

	f[n++] = LOG_NUM("conn", c->id);
	f[n++] = LOG_STR("listener", c->lc->name);
	f[n++] = LOG_STR("client", c->peer);
	f[n++] = LOG_STR("proto", config_proto_name(c->lc->protocol));
	f[n++] = LOG_STR("starttls", c->starttls_used ? "yes" : "no");
	f[n++] = LOG_STR("sni", nz(c->sni));
	f[n++] = LOG_STR("tls_version", nz(c->version));
	f[n++] = LOG_STR("cipher", nz(c->cipher));
	f[n++] = LOG_STR("client_cert", nz(c->subject));
	f[n++] = LOG_NUM("bytes_in", to_backend);
	f[n++] = LOG_NUM("bytes_out", c->backend_bytes);
	f[n++] = LOG_NUM("duration_ms", now_ms(c) - c->t_start);
	f[n++] = LOG_STR("reason", c->reason != NULL ? c->reason : "");
	f[n++] = LOG_STR("phase", phase_names[c->closed_in]);
	f[n++] = LOG_STR("backend", c->bt.addr);
	if (c->detail[0] != '\0')
		f[n++] = LOG_STR("detail", c->detail);
	log_fields(CONFIG_LOG_INFO, "close", f, n);
}
