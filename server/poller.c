/* poller: many sockets and deadlines behind one GSource (see poller.h). */
#define G_LOG_DOMAIN "sipcred-poller"

#include "server/poller.h"

#include <errno.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

/* Events taken from epoll per dispatch; the rest stay ready (level-triggered)
 * for the next iteration, so other sources get their turn. */
#define POLLER_EVENT_BATCH 256
/* Expired timers run per dispatch, for the same reason. */
#define POLLER_TIMER_BATCH 1024

struct _PollerWatch {
  Poller *poller;
  int fd;
  PollerEvents events; /* current interest; 0: not in the epoll set */
  PollerWatchFunc func;
  gpointer user_data;
  gboolean dead; /* freed while its events were being dispatched */
};

struct _PollerTimer {
  Poller *poller;
  gint64 deadline; /* monotonic microseconds */
  guint index;     /* position in the heap; G_MAXUINT when stopped */
  PollerTimerFunc func;
  gpointer user_data;
};

typedef struct {
  GSource source;
  Poller *poller;
} PollerSource;

struct _Poller {
  int epfd;
  GSource *source;
  gpointer epfd_tag; /* the epoll descriptor in source */
  guint n_watching;
  GPtrArray *heap; /* PollerTimer*, a min-heap by deadline */
  gboolean in_io;  /* dispatching epoll events */
  gboolean in_dispatch;
  GPtrArray *corpses; /* watches freed during dispatch */
  GArray *deferred;   /* PollerDeferred, to run at the end of the dispatch */
  GArray *running;    /* the batch of deferred calls being run */
};

typedef struct {
  PollerDeferFunc func;
  gpointer user_data;
} PollerDeferred;

/* ---- Timer heap -------------------------------------------------------- */

static inline PollerTimer *
heap_at(Poller *p, guint i)
{
  return g_ptr_array_index(p->heap, i);
}

static void
heap_place(Poller *p, guint i, PollerTimer *t)
{
  p->heap->pdata[i] = t;
  t->index = i;
}

static void
heap_sift_up(Poller *p, guint i)
{
  PollerTimer *t = heap_at(p, i);
  while (i > 0) {
    guint parent = (i - 1) / 2;
    PollerTimer *up = heap_at(p, parent);
    if (up->deadline <= t->deadline)
      break;
    heap_place(p, i, up);
    i = parent;
  }
  heap_place(p, i, t);
}

static void
heap_sift_down(Poller *p, guint i)
{
  guint n = p->heap->len;
  PollerTimer *t = heap_at(p, i);
  for (;;) {
    guint child = 2 * i + 1;
    if (child >= n)
      break;
    if (child + 1 < n && heap_at(p, child + 1)->deadline < heap_at(p, child)->deadline)
      child++;
    if (heap_at(p, child)->deadline >= t->deadline)
      break;
    heap_place(p, i, heap_at(p, child));
    i = child;
  }
  heap_place(p, i, t);
}

static void
heap_remove(Poller *p, PollerTimer *t)
{
  guint i = t->index;
  guint last = p->heap->len - 1;
  t->index = G_MAXUINT;
  if (i == last) {
    g_ptr_array_set_size(p->heap, last);
    return;
  }
  PollerTimer *moved = heap_at(p, last);
  g_ptr_array_set_size(p->heap, last);
  heap_place(p, i, moved);
  heap_sift_up(p, i);
  heap_sift_down(p, moved->index);
}

static void
poller_update_ready_time(Poller *p)
{
  gint64 t = p->heap->len > 0 ? heap_at(p, 0)->deadline : -1;
  if (p->deferred->len > 0)
    t = 0;
  g_source_set_ready_time(p->source, t);
}

/* ---- The source -------------------------------------------------------- */

static void
poller_dispatch_io(Poller *p)
{
  struct epoll_event evs[POLLER_EVENT_BATCH];
  int n = epoll_wait(p->epfd, evs, G_N_ELEMENTS(evs), 0);
  if (n < 0) {
    if (errno != EINTR)
      g_warning("epoll_wait: %s", g_strerror(errno));
    return;
  }
  p->in_io = TRUE;
  for (int i = 0; i < n; i++) {
    PollerWatch *w = evs[i].data.ptr;
    if (w->dead || w->events == 0)
      continue;
    PollerEvents ready = 0;
    if (evs[i].events & EPOLLIN)
      ready |= POLLER_IN;
    if (evs[i].events & EPOLLOUT)
      ready |= POLLER_OUT;
    if (evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))
      ready |= POLLER_ERR;
    ready &= w->events | POLLER_ERR;
    if (ready != 0)
      w->func(ready, w->user_data);
  }
  p->in_io = FALSE;
  g_ptr_array_set_size(p->corpses, 0); /* frees the watches freed meanwhile */
}

static void
poller_dispatch_timers(Poller *p)
{
  gint64 now = g_get_monotonic_time();
  for (guint i = 0; i < POLLER_TIMER_BATCH && p->heap->len > 0; i++) {
    PollerTimer *t = heap_at(p, 0);
    if (t->deadline > now)
      break;
    heap_remove(p, t);
    t->func(t->user_data); /* may free or re-arm t */
  }
}

/* Calls deferred while running these go to the next dispatch. */
static void
poller_run_deferred(Poller *p)
{
  GArray *batch = p->deferred;
  p->deferred = p->running;
  p->running = batch;
  for (guint i = 0; i < batch->len; i++) {
    PollerDeferred *d = &g_array_index(batch, PollerDeferred, i);
    d->func(d->user_data);
  }
  g_array_set_size(batch, 0);
}

static gboolean
poller_source_dispatch(GSource *source, GSourceFunc callback, gpointer user_data)
{
  Poller *p = ((PollerSource *)source)->poller;
  p->in_dispatch = TRUE;
  /* A wake-up for a deadline alone needs no epoll_wait. */
  if (g_source_query_unix_fd(source, p->epfd_tag) & G_IO_IN)
    poller_dispatch_io(p);
  poller_dispatch_timers(p);
  poller_run_deferred(p);
  p->in_dispatch = FALSE;
  poller_update_ready_time(p);
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs poller_source_funcs = {
    .dispatch = poller_source_dispatch,
};

Poller *
poller_new(GMainContext *ctx, GError **error)
{
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "epoll_create1: %s", g_strerror(e));
    return NULL;
  }
  Poller *p = g_new0(Poller, 1);
  p->epfd = epfd;
  p->heap = g_ptr_array_new();
  p->corpses = g_ptr_array_new_with_free_func(g_free);
  p->deferred = g_array_new(FALSE, FALSE, sizeof(PollerDeferred));
  p->running = g_array_new(FALSE, FALSE, sizeof(PollerDeferred));
  p->source = g_source_new(&poller_source_funcs, sizeof(PollerSource));
  ((PollerSource *)p->source)->poller = p;
  g_source_set_name(p->source, "sipcred poller");
  p->epfd_tag = g_source_add_unix_fd(p->source, epfd, G_IO_IN);
  g_source_attach(p->source, ctx);
  return p;
}

void
poller_free(Poller *p)
{
  if (p == NULL)
    return;
  if (p->n_watching > 0 || p->heap->len > 0)
    g_critical("poller freed with %u watches and %u timers still live", p->n_watching,
               p->heap->len);
  g_source_destroy(p->source);
  g_source_unref(p->source);
  close(p->epfd);
  g_ptr_array_unref(p->heap);
  g_ptr_array_unref(p->corpses);
  g_array_unref(p->deferred);
  g_array_unref(p->running);
  g_free(p);
}

void
poller_defer(Poller *p, PollerDeferFunc func, gpointer user_data)
{
  g_return_if_fail(p != NULL && func != NULL);
  PollerDeferred d = {func, user_data};
  g_array_append_val(p->deferred, d);
  if (!p->in_dispatch)
    g_source_set_ready_time(p->source, 0);
}

guint
poller_get_n_watching(Poller *p)
{
  return p->n_watching;
}

guint
poller_get_n_armed(Poller *p)
{
  return p->heap->len;
}

/* ---- Watches ----------------------------------------------------------- */

PollerWatch *
poller_watch_new(Poller *p, int fd, PollerWatchFunc func, gpointer user_data)
{
  g_return_val_if_fail(p != NULL && fd >= 0 && func != NULL, NULL);
  PollerWatch *w = g_new0(PollerWatch, 1);
  w->poller = p;
  w->fd = fd;
  w->func = func;
  w->user_data = user_data;
  return w;
}

gboolean
poller_watch_set_events(PollerWatch *w, PollerEvents events, GError **error)
{
  g_return_val_if_fail(w != NULL && !w->dead, FALSE);
  events &= POLLER_IN | POLLER_OUT;
  if (events == w->events)
    return TRUE;
  Poller *p = w->poller;
  struct epoll_event ev = {.data.ptr = w};
  if (events & POLLER_IN)
    ev.events |= EPOLLIN;
  if (events & POLLER_OUT)
    ev.events |= EPOLLOUT;
  int op = w->events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  if (epoll_ctl(p->epfd, op, w->fd, &ev) < 0) {
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "epoll_ctl on fd %d: %s", w->fd,
                g_strerror(e));
    return FALSE;
  }
  if (w->events == 0)
    p->n_watching++;
  else if (events == 0)
    p->n_watching--;
  w->events = events;
  return TRUE;
}

PollerEvents
poller_watch_get_events(PollerWatch *w)
{
  return w->events;
}

void
poller_watch_free(PollerWatch *w)
{
  if (w == NULL)
    return;
  Poller *p = w->poller;
  if (w->events != 0) {
    struct epoll_event ev = {0};
    if (epoll_ctl(p->epfd, EPOLL_CTL_DEL, w->fd, &ev) < 0)
      g_debug("epoll_ctl DEL fd %d: %s", w->fd, g_strerror(errno));
    p->n_watching--;
    w->events = 0;
  }
  if (p->in_io) {
    /* The batch being dispatched may still name it. */
    w->dead = TRUE;
    g_ptr_array_add(p->corpses, w);
    return;
  }
  g_free(w);
}

/* ---- Timers ------------------------------------------------------------ */

PollerTimer *
poller_timer_new(Poller *p, PollerTimerFunc func, gpointer user_data)
{
  g_return_val_if_fail(p != NULL && func != NULL, NULL);
  PollerTimer *t = g_new0(PollerTimer, 1);
  t->poller = p;
  t->index = G_MAXUINT;
  t->func = func;
  t->user_data = user_data;
  return t;
}

void
poller_timer_start(PollerTimer *t, guint ms)
{
  Poller *p = t->poller;
  gint64 deadline = g_get_monotonic_time() + (gint64)ms * 1000;
  if (t->index != G_MAXUINT) {
    gint64 old = t->deadline;
    t->deadline = deadline;
    if (deadline < old)
      heap_sift_up(p, t->index);
    else
      heap_sift_down(p, t->index);
  } else {
    t->deadline = deadline;
    g_ptr_array_add(p->heap, t);
    heap_sift_up(p, p->heap->len - 1);
  }
  if (heap_at(p, 0) == t)
    poller_update_ready_time(p);
}

void
poller_timer_stop(PollerTimer *t)
{
  if (t->index == G_MAXUINT)
    return;
  /* The source's ready time may stay earlier: it then wakes once for
   * nothing and takes the next deadline. */
  heap_remove(t->poller, t);
}

gboolean
poller_timer_is_armed(PollerTimer *t)
{
  return t->index != G_MAXUINT;
}

void
poller_timer_free(PollerTimer *t)
{
  if (t == NULL)
    return;
  poller_timer_stop(t);
  g_free(t);
}
