/* core: internals shared by the core sources, the unit tests and the fuzz targets.
 *
 * The parsers here read peer input and are plain functions with no service
 * state, so a fuzz target can call them directly.
 */
#pragma once

#include <glib.h>

#include "core/core.h"

G_BEGIN_DECLS

/* Longest URI core_aor_canonicalize() accepts, in bytes. */
#define CORE_AOR_MAX_INPUT 512

/* Whether the Accept header value @accept (all values joined by ",") lets the
 * server send @media_type ("type/subtype", no parameters). Media ranges
 * (`*` wildcards), parameters and q-values are honoured: the most specific
 * matching range decides, and q=0 means "not acceptable". Malformed elements
 * are skipped. An empty value accepts nothing (RFC 3261 section 20.1). */
gboolean core_accept_allows(const char *accept, const char *media_type);

/* The event-package token of an Event header value: leading and trailing
 * whitespace and any ";param" are ignored. Returns a pointer into @event and
 * sets @len, or returns NULL when there is no valid token. */
const char *core_event_token(const char *event, gsize *len);

/* Test seam: replaces how the core reads a certificate record. @func has the
 * contract of store_cred_get(); NULL restores store_cred_get(). */
typedef StoreCred *(*CoreCredGetCb)(StoreDb *db, const char *aor, gpointer user_data,
                                    GError **error);
void core_service_set_cred_get_cb(CoreService *svc, CoreCredGetCb func, gpointer user_data);

G_END_DECLS
