#define G_LOG_DOMAIN "sipcred-sdnotify"

#include "server/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef SIPCRED_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

G_DEFINE_QUARK(sipcred - sdnotify - error - quark, srv_sdnotify_error)

gboolean
srv_sdnotify_have_libsystemd(void)
{
#ifdef SIPCRED_HAVE_LIBSYSTEMD
  return TRUE;
#else
  return FALSE;
#endif
}

gboolean
srv_sdnotify_send_to(const char *socket_path, const char *state, GError **error)
{
  g_return_val_if_fail(socket_path != NULL, FALSE);
  g_return_val_if_fail(state != NULL, FALSE);

  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t len = strlen(socket_path);
  /* sd_notify(3) accepts an absolute path or an abstract name written with
   * a leading '@'; the abstract name is not NUL-terminated, so the address
   * length counts exactly its bytes. */
  if ((socket_path[0] != '/' && socket_path[0] != '@') || len < 2 ||
      len > sizeof(sa.sun_path) - (socket_path[0] == '/' ? 1 : 0)) {
    g_set_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_ADDRESS,
                "NOTIFY_SOCKET is not an absolute path or @abstract name (%zu bytes)", len);
    return FALSE;
  }
  memcpy(sa.sun_path, socket_path, len);
  if (socket_path[0] == '@')
    sa.sun_path[0] = '\0';
  socklen_t sa_len =
      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (socket_path[0] == '/' ? 1 : 0));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int e = errno;
    g_set_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_SEND, "notify socket: %s",
                g_strerror(e));
    return FALSE;
  }
  ssize_t n;
  do
    n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
  while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  if (n < 0) {
    g_set_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_SEND, "notify %s: %s", socket_path,
                g_strerror(e));
    return FALSE;
  }
  if ((size_t)n != strlen(state)) {
    g_set_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_SEND,
                "notify %s: short write (%zd of %zu bytes)", socket_path, n, strlen(state));
    return FALSE;
  }
  return TRUE;
}

gboolean
srv_sdnotify_send(const char *state, GError **error)
{
  g_return_val_if_fail(state != NULL, FALSE);
#ifdef SIPCRED_HAVE_LIBSYSTEMD
  int r = sd_notify(0, state);
  if (r < 0) {
    g_set_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_SEND, "sd_notify: %s",
                g_strerror(-r));
    return FALSE;
  }
  return TRUE;
#else
  const char *path = g_getenv("NOTIFY_SOCKET");
  if (path == NULL || path[0] == '\0')
    return TRUE;
  return srv_sdnotify_send_to(path, state, error);
#endif
}

static void
sdnotify_or_warn(const char *state)
{
  g_autoptr(GError) error = NULL;
  if (!srv_sdnotify_send(state, &error))
    g_warning("cannot notify the service manager: %s", error->message);
}

void
srv_sdnotify_ready(const char *status)
{
  /* STATUS= shows in `systemctl status`; a newline would start a new field. */
  g_autofree char *clean = g_strdup(status != NULL ? status : "");
  g_strdelimit(clean, "\n", ' ');
  g_autofree char *msg =
      status != NULL ? g_strdup_printf("READY=1\nSTATUS=%s", clean) : g_strdup("READY=1");
  sdnotify_or_warn(msg);
}

void
srv_sdnotify_reloading(void)
{
  /* systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload);
   * older managers ignore the field. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  g_autofree char *msg =
      g_strdup_printf("RELOADING=1\nMONOTONIC_USEC=%" G_GUINT64_FORMAT,
                      (guint64)ts.tv_sec * G_USEC_PER_SEC + (guint64)ts.tv_nsec / 1000);
  sdnotify_or_warn(msg);
}

void
srv_sdnotify_stopping(void)
{
  sdnotify_or_warn("STOPPING=1");
}
