/*
 * The commands each handler lets reach the backend before TLS with
 * require_tls (what the fuzz targets check the backend ever gets then).
 */
#include <stddef.h>

#include "proto.h"
#include "session_fuzz.h"

/* White space as Postfix's tokenizer sees it (ISSPACE in the C locale). */
static int
postfix_space(char c)
{

	return (c == ' ' || (c >= '\t' && c <= '\r'));
}

/*
 * Before TLS with require_tls only these reach the backend.  The verb is
 * read as the backend (Postfix's smtpd_token) reads it: leading white
 * space skipped, ended by white space or NUL, so that what is checked
 * here is what the backend would act on.
 */
int
sf_allowed_smtp(const char *p, size_t len)
{
	static const char *ok[] = { "EHLO", "HELO", "NOOP", "RSET", "QUIT" };
	size_t n = proto_chomp(p, len), vs, ve, i;

	for (vs = 0; vs < n && postfix_space(p[vs]); vs++)
		continue;
	for (ve = vs; ve < n && !postfix_space(p[ve]) && p[ve] != '\0'; ve++)
		continue;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (proto_word_eq(p + vs, ve - vs, ok[i]))
			return (1);
	return (0);
}

/*
 * Before TLS with require_tls only these commands reach the backend, as
 * whole lines: never a literal, never a continuation line.
 */
int
sf_allowed_imap(const char *p, size_t len)
{
	static const char *ok[] = { "CAPABILITY", "NOOP", "LOGOUT", "ID" };
	size_t n = proto_chomp(p, len), t, c, i;

	if (n > 0 && p[n - 1] == '}')
		return (0);
	for (t = 0; t < n && p[t] != ' '; t++)
		continue;
	if (t == 0 || t >= n)
		return (0);
	for (c = t + 1; c < n && p[c] != ' '; c++)
		continue;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (proto_word_eq(p + t + 1, c - t - 1, ok[i]))
			return (1);
	return (0);
}

/* Before TLS with require_tls only these reach the backend. */
int
sf_allowed_pop3(const char *p, size_t len)
{
	static const char *ok[] = { "CAPA", "NOOP", "QUIT" };
	size_t n = proto_chomp(p, len), v, i;

	for (v = 0; v < n && p[v] != ' '; v++)
		continue;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (proto_word_eq(p, v, ok[i]))
			return (1);
	return (0);
}
