/* server/sdnotify: tell the service manager where the daemon is
 * (sd_notify(3)): READY=1, RELOADING=1, STOPPING=1.
 *
 * All systemd code lives here (CONVENTIONS 12). With libsystemd (the
 * `systemd` feature) the messages go through sd_notify(); without it a small
 * built-in writer sends the same datagram to $NOTIFY_SOCKET, abstract
 * ("@name") sockets included. When $NOTIFY_SOCKET is unset (not started by
 * systemd with Type=notify) every call does nothing. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define SRV_SDNOTIFY_ERROR (srv_sdnotify_error_quark())
GQuark srv_sdnotify_error_quark(void);

typedef enum {
  SRV_SDNOTIFY_ERROR_ADDRESS, /* $NOTIFY_SOCKET is not a usable address */
  SRV_SDNOTIFY_ERROR_SEND,    /* the socket or sendmsg() failed */
} SrvSdnotifyError;

/* Sends STATE (newline-separated "KEY=VALUE" lines) to $NOTIFY_SOCKET, via
 * libsystemd when built with it. TRUE when sent or when $NOTIFY_SOCKET is
 * unset; FALSE with *error otherwise. */
gboolean srv_sdnotify_send(const char *state, GError **error);

/* The built-in writer: one SOCK_DGRAM datagram with STATE to SOCKET_PATH, an
 * absolute path or "@abstract-name". Used when libsystemd is absent; public
 * so that tests reach it in every build. */
gboolean srv_sdnotify_send_to(const char *socket_path, const char *state, GError **error);

/* The daemon's three notifications; a failure is logged as a warning (the
 * service keeps running: systemd then reports the start as timed out). */
void srv_sdnotify_ready(const char *status);
void srv_sdnotify_reloading(void);
void srv_sdnotify_stopping(void);

/* TRUE when built with libsystemd. */
gboolean srv_sdnotify_have_libsystemd(void);

G_END_DECLS
