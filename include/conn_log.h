/*
 * conn_log: the one line a session leaves when it closes.  Only the conn
 * modules use it.
 */
#ifndef MAILTLSD_CONN_LOG_H
#define MAILTLSD_CONN_LOG_H

struct conn;

void	conn_log_close(struct conn *);

#endif
