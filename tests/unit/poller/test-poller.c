#define G_LOG_DOMAIN "sipcred-test-poller"

/* Tests of server/poller on a real GMainContext with socketpairs: readiness
 * is reported for exactly the interest set, a watch without interest hears
 * nothing (not even a hang-up), a watch freed inside the batch that would
 * report it is not called, and timers fire once, in deadline order, unless
 * stopped, re-armed or freed (also from within callbacks); deferred calls
 * run at the end of the dispatch that made them. */

#include <sys/socket.h>
#include <unistd.h>

#include "server/poller.h"

typedef struct {
  GMainContext *ctx;
  Poller *poller;
} Fixture;

static void
fixture_setup(Fixture *f, gconstpointer data)
{
  f->ctx = g_main_context_new();
  g_autoptr(GError) err = NULL;
  f->poller = poller_new(f->ctx, &err);
  g_assert_no_error(err);
}

static void
fixture_teardown(Fixture *f, gconstpointer data)
{
  poller_free(f->poller);
  g_main_context_unref(f->ctx);
}

/* Runs the context until @done is set or @ms pass; FALSE on time out. */
static gboolean
spin_until(Fixture *f, const gboolean *done, guint ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
  while (!*done && g_get_monotonic_time() < end)
    g_main_context_iteration(f->ctx, FALSE), g_usleep(1000);
  return *done;
}

/* Runs the context for @ms, whatever happens. */
static void
spin_for(Fixture *f, guint ms)
{
  gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
  while (g_get_monotonic_time() < end)
    g_main_context_iteration(f->ctx, FALSE), g_usleep(1000);
}

typedef struct {
  guint calls;
  PollerEvents last;
  gboolean done;
  int fd;            /* drained on POLLER_IN when >= 0 */
  PollerWatch *self; /* freed from the callback when set */
  PollerWatch *other;
} WatchLog;

static void
watch_cb(PollerEvents events, gpointer data)
{
  WatchLog *log = data;
  log->calls++;
  log->last = events;
  log->done = TRUE;
  if ((events & POLLER_IN) && log->fd >= 0) {
    char buf[64];
    g_assert_cmpint(read(log->fd, buf, sizeof buf), >, 0);
  }
  if (log->other != NULL)
    g_clear_pointer(&log->other, poller_watch_free);
  if (log->self != NULL)
    g_clear_pointer(&log->self, poller_watch_free);
}

static void
test_watch_interest(Fixture *f, gconstpointer data)
{
  int sv[2];
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  WatchLog log = {.fd = sv[0]};
  PollerWatch *w = poller_watch_new(f->poller, sv[0], watch_cb, &log);
  g_autoptr(GError) err = NULL;

  /* No interest: data waiting is not reported. */
  g_assert_cmpint(write(sv[1], "x", 1), ==, 1);
  spin_for(f, 30);
  g_assert_cmpuint(log.calls, ==, 0);
  g_assert_cmpuint(poller_get_n_watching(f->poller), ==, 0);

  /* Reading: reported once, and not again after the data is drained. */
  g_assert_true(poller_watch_set_events(w, POLLER_IN, &err));
  g_assert_cmpuint(poller_get_n_watching(f->poller), ==, 1);
  g_assert_true(spin_until(f, &log.done, 1000));
  g_assert_cmpuint(log.last, ==, POLLER_IN);
  spin_for(f, 30);
  g_assert_cmpuint(log.calls, ==, 1);

  /* Writing: an empty socket buffer is writable at once, and stays so
   * (level-triggered) until the interest is dropped. */
  log.done = FALSE;
  g_assert_true(poller_watch_set_events(w, POLLER_OUT, &err));
  g_assert_true(spin_until(f, &log.done, 1000));
  g_assert_cmpuint(log.last, ==, POLLER_OUT);
  guint before = log.calls;
  spin_for(f, 30);
  g_assert_cmpuint(log.calls, >, before);
  g_assert_true(poller_watch_set_events(w, 0, &err));
  g_assert_cmpuint(poller_get_n_watching(f->poller), ==, 0);
  before = log.calls;

  /* A hang-up of the peer is not reported without interest... */
  close(sv[1]);
  spin_for(f, 30);
  g_assert_cmpuint(log.calls, ==, before);
  /* ...and with it, as readable plus POLLER_ERR (read then sees EOF). */
  log.done = FALSE;
  log.fd = -1;
  g_assert_true(poller_watch_set_events(w, POLLER_IN, &err));
  g_assert_true(spin_until(f, &log.done, 1000));
  g_assert_true(log.last & POLLER_IN);
  g_assert_true(log.last & POLLER_ERR);

  poller_watch_free(w);
  g_assert_cmpuint(poller_get_n_watching(f->poller), ==, 0);
  close(sv[0]);
}

/* Two watches ready in the same batch: the first frees the second, which
 * must then not be called (its memory is not touched after the batch). */
static void
test_watch_free_in_batch(Fixture *f, gconstpointer data)
{
  int a[2], b[2];
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), ==, 0);
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), ==, 0);
  WatchLog la = {.fd = a[0]}, lb = {.fd = b[0]};
  PollerWatch *wa = poller_watch_new(f->poller, a[0], watch_cb, &la);
  PollerWatch *wb = poller_watch_new(f->poller, b[0], watch_cb, &lb);
  g_assert_true(poller_watch_set_events(wa, POLLER_IN, NULL));
  g_assert_true(poller_watch_set_events(wb, POLLER_IN, NULL));
  /* Whichever runs first frees itself and the other. */
  la.self = wa;
  la.other = wb;
  lb.self = wb;
  lb.other = wa;
  g_assert_cmpint(write(a[1], "x", 1), ==, 1);
  g_assert_cmpint(write(b[1], "x", 1), ==, 1);
  spin_for(f, 50);
  g_assert_cmpuint(la.calls + lb.calls, ==, 1);
  g_assert_cmpuint(poller_get_n_watching(f->poller), ==, 0);
  for (guint i = 0; i < 2; i++)
    close(a[i]), close(b[i]);
}

typedef struct {
  GArray *order; /* ids in firing order */
  guint id;
  PollerTimer *self;   /* freed from the callback when set */
  PollerTimer *rearm;  /* re-armed from the callback when set (once) */
  PollerTimer *cancel; /* stopped from the callback when set */
} TimerLog;

static void
timer_cb(gpointer data)
{
  TimerLog *log = data;
  g_array_append_val(log->order, log->id);
  if (log->cancel != NULL)
    poller_timer_stop(g_steal_pointer(&log->cancel));
  if (log->rearm != NULL)
    poller_timer_start(g_steal_pointer(&log->rearm), 10);
  if (log->self != NULL)
    g_clear_pointer(&log->self, poller_timer_free);
}

static void
test_timers(Fixture *f, gconstpointer data)
{
  g_autoptr(GArray) order = g_array_new(FALSE, FALSE, sizeof(guint));
  enum { N = 200 };
  TimerLog logs[N];
  PollerTimer *timers[N];
  /* Armed in a scrambled order; each fires once, in deadline order. */
  for (guint i = 0; i < N; i++) {
    logs[i] = (TimerLog){.order = order, .id = i};
    timers[i] = poller_timer_new(f->poller, timer_cb, &logs[i]);
  }
  for (guint k = 0; k < N; k++) {
    guint i = (k * 37) % N;
    poller_timer_start(timers[i], 20 + i);
  }
  g_assert_cmpuint(poller_get_n_armed(f->poller), ==, N);
  /* Stopped ones never fire; one moved later fires last. */
  for (guint i = 0; i < N; i += 10)
    poller_timer_stop(timers[i]);
  poller_timer_start(timers[1], 400);
  g_assert_false(poller_timer_is_armed(timers[0]));
  g_assert_true(poller_timer_is_armed(timers[1]));
  spin_for(f, 600);
  g_assert_cmpuint(order->len, ==, N - N / 10);
  for (guint k = 1; k < order->len - 1; k++)
    g_assert_cmpuint(g_array_index(order, guint, k - 1), <, g_array_index(order, guint, k));
  g_assert_cmpuint(g_array_index(order, guint, order->len - 1), ==, 1);
  g_assert_cmpuint(poller_get_n_armed(f->poller), ==, 0);
  for (guint i = 0; i < N; i++)
    poller_timer_free(timers[i]);
}

static void
test_timers_from_callbacks(Fixture *f, gconstpointer data)
{
  g_autoptr(GArray) order = g_array_new(FALSE, FALSE, sizeof(guint));
  TimerLog a = {.order = order, .id = 1}, b = {.order = order, .id = 2},
           c = {.order = order, .id = 3};
  PollerTimer *ta = poller_timer_new(f->poller, timer_cb, &a);
  PollerTimer *tb = poller_timer_new(f->poller, timer_cb, &b);
  PollerTimer *tc = poller_timer_new(f->poller, timer_cb, &c);
  /* a frees itself and stops c; b re-arms itself once. */
  a.self = ta;
  a.cancel = tc;
  b.rearm = tb;
  poller_timer_start(ta, 5);
  poller_timer_start(tb, 5);
  poller_timer_start(tc, 30);
  spin_for(f, 120);
  g_assert_cmpuint(order->len, ==, 3);
  guint ids[3] = {g_array_index(order, guint, 0), g_array_index(order, guint, 1),
                  g_array_index(order, guint, 2)};
  g_assert_true((ids[0] == 1 && ids[1] == 2) || (ids[0] == 2 && ids[1] == 1));
  g_assert_cmpuint(ids[2], ==, 2); /* b again; c was stopped */
  g_assert_null(a.self);
  g_assert_cmpuint(poller_get_n_armed(f->poller), ==, 0);
  poller_timer_free(tb);
  poller_timer_free(tc);
}

typedef struct {
  Poller *poller;
  GString *trace;
  guint again; /* times the deferred call defers itself once more */
} DeferLog;

static void
defer_cb(gpointer data)
{
  DeferLog *log = data;
  g_string_append_c(log->trace, 'D');
  if (log->again > 0) {
    log->again--;
    poller_defer(log->poller, defer_cb, log);
  }
}

static void
defer_watch_cb(PollerEvents events, gpointer data)
{
  DeferLog *log = data;
  g_string_append_c(log->trace, 'W');
  /* Deferred twice from the first event: both run after it, in order. */
  if (log->trace->len == 1) {
    poller_defer(log->poller, defer_cb, log);
    poller_defer(log->poller, defer_cb, log);
  }
}

/* A call deferred from a callback runs at the end of that same dispatch,
 * one deferred from outside runs without any I/O or timer due, and one
 * deferred from a deferred call runs in a later dispatch. */
static void
test_defer(Fixture *f, gconstpointer data)
{
  int sv[2];
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  DeferLog log = {.poller = f->poller, .trace = g_string_new(NULL)};
  PollerWatch *w = poller_watch_new(f->poller, sv[0], defer_watch_cb, &log);
  g_assert_true(poller_watch_set_events(w, POLLER_IN, NULL));
  g_assert_cmpint(write(sv[1], "x", 1), ==, 1);
  /* One iteration: the watch fires (the data stays unread, so it is ready
   * again later), and both deferred calls run before the iteration ends. */
  while (log.trace->len == 0)
    g_main_context_iteration(f->ctx, TRUE);
  g_assert_cmpstr(log.trace->str, ==, "WDD");
  poller_watch_free(w);

  g_string_truncate(log.trace, 0);
  log.again = 1;
  poller_defer(f->poller, defer_cb, &log);
  gboolean done = FALSE;
  gint64 end = g_get_monotonic_time() + G_USEC_PER_SEC;
  while (!done && g_get_monotonic_time() < end) {
    g_main_context_iteration(f->ctx, FALSE);
    done = log.trace->len == 2;
  }
  g_assert_cmpstr(log.trace->str, ==, "DD");
  g_string_free(log.trace, TRUE);
  close(sv[0]);
  close(sv[1]);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add("/poller/watch/interest", Fixture, NULL, fixture_setup, test_watch_interest,
             fixture_teardown);
  g_test_add("/poller/watch/free-in-batch", Fixture, NULL, fixture_setup, test_watch_free_in_batch,
             fixture_teardown);
  g_test_add("/poller/timer/order", Fixture, NULL, fixture_setup, test_timers, fixture_teardown);
  g_test_add("/poller/timer/from-callbacks", Fixture, NULL, fixture_setup,
             test_timers_from_callbacks, fixture_teardown);
  g_test_add("/poller/defer", Fixture, NULL, fixture_setup, test_defer, fixture_teardown);
  return g_test_run();
}
