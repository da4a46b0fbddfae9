#define G_LOG_DOMAIN "sipcred-test-sdnotify"

/* Tests of server/sdnotify: the notifications reach a datagram socket the
 * test binds, as systemd's manager would (a path and an abstract "@" name),
 * through the built-in writer and through srv_sdnotify_send() (libsystemd's
 * sd_notify() when built with it); nothing happens without NOTIFY_SOCKET. */

#include <errno.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "server/sdnotify.h"

typedef struct {
  char *dir;
  char *address; /* what NOTIFY_SOCKET holds */
  int fd;
} Fixture;

static void
bind_socket(Fixture *f, gboolean abstract)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  socklen_t len;
  f->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  g_assert_cmpint(f->fd, >=, 0);
  if (abstract) {
    f->address = g_strdup_printf("@sipcred-test-sdnotify-%d-%u", (int)getpid(), g_random_int());
    size_t n = strlen(f->address);
    memcpy(sa.sun_path, f->address, n);
    sa.sun_path[0] = '\0';
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  } else {
    g_autoptr(GError) error = NULL;
    f->dir = g_dir_make_tmp("sipcred-sdnotify-XXXXXX", &error);
    g_assert_no_error(error);
    f->address = g_build_filename(f->dir, "notify", NULL);
    g_assert_cmpuint(strlen(f->address), <, sizeof(sa.sun_path));
    strcpy(sa.sun_path, f->address);
    len = sizeof(sa);
  }
  g_assert_cmpint(bind(f->fd, (struct sockaddr *)&sa, len), ==, 0);
}

static void
fixture_path_setup(Fixture *f, gconstpointer data)
{
  bind_socket(f, FALSE);
}

static void
fixture_abstract_setup(Fixture *f, gconstpointer data)
{
  bind_socket(f, TRUE);
}

static void
fixture_teardown(Fixture *f, gconstpointer data)
{
  close(f->fd);
  if (f->dir != NULL) {
    g_unlink(f->address);
    g_rmdir(f->dir);
  }
  g_free(f->dir);
  g_free(f->address);
  g_unsetenv("NOTIFY_SOCKET");
}

/* The next datagram, waiting at most 5 s; NULL when none came. */
static char *
receive(Fixture *f, int timeout_ms)
{
  struct pollfd p = {.fd = f->fd, .events = POLLIN};
  int r;
  do
    r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r <= 0)
    return NULL;
  char buf[4096];
  ssize_t n = recv(f->fd, buf, sizeof(buf) - 1, 0);
  g_assert_cmpint(n, >=, 0);
  return g_strndup(buf, (gsize)n);
}

/* The message's lines, one "KEY=VALUE" each. */
static gboolean
has_line(const char *msg, const char *line)
{
  g_auto(GStrv) lines = g_strsplit(msg, "\n", -1);
  return g_strv_contains((const char *const *)lines, line);
}

static void
test_send_to(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  const char *states[] = {"READY=1", "RELOADING=1", "STOPPING=1"};
  for (guint i = 0; i < G_N_ELEMENTS(states); i++) {
    g_assert_true(srv_sdnotify_send_to(f->address, states[i], &error));
    g_assert_no_error(error);
    g_autofree char *got = receive(f, 5000);
    g_assert_cmpstr(got, ==, states[i]);
  }
}

/* The daemon's calls, through whichever writer this build uses. */
static void
test_daemon_calls(Fixture *f, gconstpointer data)
{
  g_setenv("NOTIFY_SOCKET", f->address, TRUE);

  srv_sdnotify_ready("serving example.com on 127.0.0.1:5061");
  g_autofree char *ready = receive(f, 5000);
  g_assert_nonnull(ready);
  g_assert_true(has_line(ready, "READY=1"));
  g_assert_true(has_line(ready, "STATUS=serving example.com on 127.0.0.1:5061"));

  srv_sdnotify_reloading();
  g_autofree char *reloading = receive(f, 5000);
  g_assert_nonnull(reloading);
  g_assert_true(has_line(reloading, "RELOADING=1"));
  g_assert_true(g_str_has_prefix(strchr(reloading, '\n') + 1, "MONOTONIC_USEC="));

  /* A status with a newline cannot smuggle in another field. */
  srv_sdnotify_ready("reloaded\nSTOPPING=1");
  g_autofree char *again = receive(f, 5000);
  g_assert_nonnull(again);
  g_assert_true(has_line(again, "READY=1"));
  g_assert_false(has_line(again, "STOPPING=1"));

  srv_sdnotify_stopping();
  g_autofree char *stopping = receive(f, 5000);
  g_assert_cmpstr(stopping, ==, "STOPPING=1");
}

/* Not started by systemd: nothing is sent and nothing fails. */
static void
test_unset(Fixture *f, gconstpointer data)
{
  g_unsetenv("NOTIFY_SOCKET");
  g_autoptr(GError) error = NULL;
  g_assert_true(srv_sdnotify_send("READY=1", &error));
  g_assert_no_error(error);
  srv_sdnotify_ready("x");
  srv_sdnotify_stopping();
  g_autofree char *got = receive(f, 200);
  g_assert_null(got);
}

static void
test_bad_address(void)
{
  g_autoptr(GError) error = NULL;
  g_assert_false(srv_sdnotify_send_to("relative/notify", "READY=1", &error));
  g_assert_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_ADDRESS);
  g_clear_error(&error);

  g_autofree char *longpath = g_strnfill(200, 'x');
  longpath[0] = '/';
  g_assert_false(srv_sdnotify_send_to(longpath, "READY=1", &error));
  g_assert_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_ADDRESS);
  g_clear_error(&error);

  /* Nobody listens there: a send error, not a crash or a hang. */
  g_autoptr(GError) dir_error = NULL;
  g_autofree char *dir = g_dir_make_tmp("sipcred-sdnotify-XXXXXX", &dir_error);
  g_assert_no_error(dir_error);
  g_autofree char *gone = g_build_filename(dir, "gone", NULL);
  g_assert_false(srv_sdnotify_send_to(gone, "READY=1", &error));
  g_assert_error(error, SRV_SDNOTIFY_ERROR, SRV_SDNOTIFY_ERROR_SEND);
  g_rmdir(dir);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_unsetenv("NOTIFY_SOCKET");
  g_test_message("writer: %s", srv_sdnotify_have_libsystemd() ? "libsystemd sd_notify()"
                                                              : "built-in $NOTIFY_SOCKET writer");
  g_test_add("/sdnotify/send-to/path", Fixture, NULL, fixture_path_setup, test_send_to,
             fixture_teardown);
  g_test_add("/sdnotify/send-to/abstract", Fixture, NULL, fixture_abstract_setup, test_send_to,
             fixture_teardown);
  g_test_add("/sdnotify/daemon-calls/path", Fixture, NULL, fixture_path_setup, test_daemon_calls,
             fixture_teardown);
  g_test_add("/sdnotify/daemon-calls/abstract", Fixture, NULL, fixture_abstract_setup,
             test_daemon_calls, fixture_teardown);
  g_test_add("/sdnotify/unset", Fixture, NULL, fixture_path_setup, test_unset, fixture_teardown);
  g_test_add_func("/sdnotify/bad-address", test_bad_address);
  return g_test_run();
}
