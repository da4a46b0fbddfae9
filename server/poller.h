/* poller: many sockets and deadlines behind one GSource.
 *
 * GLib's main loop visits every attached source on every iteration (prepare,
 * then a poll() over every descriptor). With one socket source and one
 * timeout source per TLS flow, a daemon holding 10,000 flows spent about 40 %
 * of its time there during a fan-out. The poller keeps the sockets in one
 * epoll set and the deadlines in one binary heap, so an iteration of the
 * loop costs O(ready sockets + expired deadlines), not O(flows).
 *
 * Watches are level-triggered, like GLib's socket sources. Callbacks run
 * from the GMainContext the poller was made for. Linux only (epoll).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _Poller Poller;
typedef struct _PollerWatch PollerWatch;
typedef struct _PollerTimer PollerTimer;

/* Interest in a watch. POLLER_ERR (error or hang-up) is always reported
 * while there is any interest. */
typedef enum {
  POLLER_IN = 1 << 0,
  POLLER_OUT = 1 << 1,
  POLLER_ERR = 1 << 2,
} PollerEvents;

/* @events: what is ready, a subset of the interest plus POLLER_ERR. */
typedef void (*PollerWatchFunc)(PollerEvents events, gpointer user_data);
typedef void (*PollerTimerFunc)(gpointer user_data);

/* Attaches one source to @ctx (NULL: the default context). */
Poller *poller_new(GMainContext *ctx, GError **error);
/* Every watch and timer must have been freed first. */
void poller_free(Poller *poller);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Poller, poller_free)

/* A watch of @fd with no interest yet. @fd must stay open until the watch is
 * freed. */
PollerWatch *poller_watch_new(Poller *poller, int fd, PollerWatchFunc func, gpointer user_data);
/* Sets the interest (POLLER_IN | POLLER_OUT, or 0 for none: then nothing is
 * reported, not even a hang-up). FALSE with @error when epoll refuses. */
gboolean poller_watch_set_events(PollerWatch *watch, PollerEvents events, GError **error);
PollerEvents poller_watch_get_events(PollerWatch *watch);
/* Safe from within any callback, including the watch's own: an event of
 * @watch that is already collected is dropped. Call it before closing fd. */
void poller_watch_free(PollerWatch *watch);

/* A stopped timer. */
PollerTimer *poller_timer_new(Poller *poller, PollerTimerFunc func, gpointer user_data);
/* (Re)arms @timer to fire once, @ms milliseconds from now. */
void poller_timer_start(PollerTimer *timer, guint ms);
void poller_timer_stop(PollerTimer *timer);
gboolean poller_timer_is_armed(PollerTimer *timer);
/* Safe from within any callback, including the timer's own. */
void poller_timer_free(PollerTimer *timer);

/* Runs @func(@user_data) once: at the end of the poller's current dispatch
 * (after its I/O and timers), or, when called from outside one, early in
 * the next iteration of the loop. Lets callers gather what many callbacks
 * of one dispatch produce, e.g. one send() for many messages. There is no
 * cancelling: @user_data must outlive the call or the poller. */
typedef void (*PollerDeferFunc)(gpointer user_data);
void poller_defer(Poller *poller, PollerDeferFunc func, gpointer user_data);

/* Live watches with interest, and armed timers (for tests and stats). */
guint poller_get_n_watching(Poller *poller);
guint poller_get_n_armed(Poller *poller);

G_END_DECLS
