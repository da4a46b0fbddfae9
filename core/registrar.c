/* core/registrar: REGISTER (RFC 3261 section 10.3, RFC 5626 section 6).
 * Only the AOR itself, authenticated with digest, may change its bindings;
 * the update is one durable store transaction before the 200 leaves. Each
 * binding remembers the edge flow it came on, so that the MESSAGE relay can
 * reach the device over that TLS connection. */
#define G_LOG_DOMAIN "sipcred-core"

#include <string.h>

#include "core/core-service.h"

/* What identifies a binding (RFC 5626 6, RFC 3261 10.3 step 6). */
typedef enum {
  KEY_URI,
  KEY_INSTANCE,
  KEY_INSTANCE_REG_ID,
} BindingKey;

static BindingKey
binding_key(const char *instance, guint32 reg_id, gboolean outbound)
{
  if (instance == NULL)
    return KEY_URI;
  return outbound && reg_id != 0 ? KEY_INSTANCE_REG_ID : KEY_INSTANCE;
}

/* RFC 3261 19.1.4, reduced: scheme and host compare case-insensitively,
 * the rest exactly. Enough to find a UA's own Contact again. */
static gboolean
contact_uri_equal(const char *a, const char *b)
{
  const char *at_a = strchr(a, '@'), *at_b = strchr(b, '@');
  const char *ca = strchr(a, ':'), *cb = strchr(b, ':');
  if (ca == NULL || cb == NULL || ca - a != cb - b || g_ascii_strncasecmp(a, b, ca - a) != 0)
    return FALSE;
  /* user part (if any) exactly, the rest case-insensitively up to params */
  if ((at_a == NULL) != (at_b == NULL))
    return FALSE;
  if (at_a != NULL && (at_a - ca != at_b - cb || strncmp(ca, cb, at_a - ca) != 0))
    return FALSE;
  const char *ra = at_a ? at_a : ca, *rb = at_b ? at_b : cb;
  gsize ha = strcspn(ra, ";?"), hb = strcspn(rb, ";?");
  return ha == hb && g_ascii_strncasecmp(ra, rb, ha) == 0 && strcmp(ra + ha, rb + hb) == 0;
}

static gboolean
binding_matches(const StoreBinding *b, const CoreContact *c, gboolean outbound)
{
  switch (binding_key(c->instance, c->reg_id, outbound)) {
  case KEY_INSTANCE_REG_ID:
    return g_strcmp0(b->instance, c->instance) == 0 && b->reg_id == c->reg_id;
  case KEY_INSTANCE:
    return g_strcmp0(b->instance, c->instance) == 0 && b->reg_id == 0;
  case KEY_URI:
  default:
    return b->instance == NULL && contact_uri_equal(b->contact, c->uri);
  }
}

GPtrArray *
core_registrar_current_bindings(CoreService *svc, const char *aor, gint64 now, GError **error)
{
  g_autoptr(GPtrArray) all = store_reg_get(svc->store, aor, error);
  if (all == NULL)
    return NULL;
  for (guint i = all->len; i > 0; i--) {
    StoreBinding *b = g_ptr_array_index(all, i - 1);
    if (b->expires_at <= now)
      g_ptr_array_remove_index(all, i - 1);
  }
  return g_steal_pointer(&all);
}

static gboolean
contact_scheme_ok(const char *uri)
{
  return g_ascii_strncasecmp(uri, "sip:", 4) == 0 || g_ascii_strncasecmp(uri, "sips:", 5) == 0;
}

/* The host of a sip:/sips: Request-URI, lower-cased, without port,
 * parameters or headers; NULL when there is none. */
static char *
registrar_uri_host(const char *uri)
{
  const char *p;
  if (uri == NULL)
    return NULL;
  if (g_ascii_strncasecmp(uri, "sip:", 4) == 0)
    p = uri + 4;
  else if (g_ascii_strncasecmp(uri, "sips:", 5) == 0)
    p = uri + 5;
  else
    return NULL;
  const char *end = p + strcspn(p, ";?>");
  for (const char *q = p; q < end; q++)
    if (*q == '@')
      p = q + 1; /* a Request-URI of REGISTER has no user, but may */
  gsize len;
  if (*p == '[') {
    const char *close = memchr(p, ']', end - p);
    len = close ? (gsize)(close - p + 1) : 0;
  } else {
    len = strcspn(p, ":;?>");
    len = MIN(len, (gsize)(end - p));
  }
  return len > 0 ? g_ascii_strdown(p, len) : NULL;
}

/* The 200: every binding, with its remaining time, a Date, and outbound. */
static void
registrar_ok(CoreService *svc, gpointer txn, GPtrArray *bindings, gint64 now, gboolean outbound)
{
  g_autoptr(GPtrArray) values = g_ptr_array_new_with_free_func(g_free);

  for (guint i = 0; i < bindings->len; i++) {
    StoreBinding *b = g_ptr_array_index(bindings, i);
    GString *v = g_string_new(NULL);
    g_string_append_printf(v, "<%s>;expires=%" G_GINT64_FORMAT, b->contact,
                           MAX(b->expires_at - now, 0));
    if (b->q >= 0) {
      char q[G_ASCII_DTOSTR_BUF_SIZE];
      g_string_append_printf(v, ";q=%s", g_ascii_formatd(q, sizeof q, "%.3g", b->q));
    }
    if (b->instance != NULL)
      g_string_append_printf(v, ";+sip.instance=\"%s\"", b->instance);
    if (b->reg_id != 0)
      g_string_append_printf(v, ";reg-id=%u", b->reg_id);
    g_ptr_array_add(values, g_string_free(v, FALSE));
  }
  g_ptr_array_add(values, NULL);
  CoreResponse resp = {
      .status = 200,
      .phrase = "OK",
      .contacts = (const char *const *)values->pdata,
      .date = TRUE,
      .require = outbound ? "outbound" : NULL,
      .supported = "outbound",
  };
  core_respond(svc, txn, &resp);
}

void
core_register(CoreService *svc, gpointer txn, const CoreRegisterInfo *info)
{
  g_autoptr(GError) error = NULL;

  g_return_if_fail(svc != NULL && info != NULL);
  /* Step 1: a registrar for our domains only. */
  g_autofree char *domain = registrar_uri_host(info->request_uri);
  if (domain == NULL || !g_strv_contains((const char *const *)svc->domains, domain)) {
    core_respond_error(svc, txn, 404, "Domain not served here");
    return;
  }
  /* Step 3: the AOR, a sip: or sips: URI with a user, of a served domain. */
  g_autofree char *aor = info->to_uri ? core_aor_canonicalize(info->to_uri, &error) : NULL;
  if (aor == NULL) {
    /* A sip: URI with a user we cannot take as an AOR (an escaped NUL in
     * the user part, RFC 4475 3.1.1.4) is valid SIP naming no user of
     * ours: 404. No user part at all is a malformed AOR: 400. */
    const char *at = info->to_uri ? strchr(info->to_uri, '@') : NULL;
    gboolean has_user = at != NULL && at > info->to_uri && at[-1] != ':' && at[-1] != '<';
    if (has_user && contact_scheme_ok(info->to_uri + (*info->to_uri == '<'))) {
      g_autofree char *phrase = g_strdup_printf("No such user here (%s)", error->message);
      core_respond_error(svc, txn, 404, phrase);
    } else {
      core_respond_error(svc, txn, 400, "To is not a sip: or sips: AOR with a user");
    }
    return;
  }
  g_autofree char *served =
      core_aor_canonicalize_served((const char *const *)svc->domains, aor, NULL);
  if (served == NULL) {
    core_respond_error(svc, txn, 404, "Not a user of a domain served here");
    return;
  }
  /* RFC 3261 10.3 step 3: the AOR must be valid for the Request-URI's domain. */
  if (strcmp(strrchr(aor, '@') + 1, domain) != 0) {
    core_respond_error(svc, txn, 404, "To is not an AOR of the Request-URI's domain");
    return;
  }
  /* Contacts are checked before authentication: a malformed request gets
   * its 400 without a challenge round. */
  gboolean wildcard = FALSE;
  for (guint i = 0; i < info->n_contacts; i++) {
    const CoreContact *c = &info->contacts[i];
    if (c->uri == NULL || *c->uri == '\0') {
      core_respond_error(svc, txn, 400, "Empty Contact");
      return;
    }
    if (strcmp(c->uri, "*") == 0) {
      wildcard = TRUE;
    } else if (!contact_scheme_ok(c->uri)) {
      core_respond_error(svc, txn, 400, "Contact is not a sip: or sips: URI");
      return;
    }
  }
  if (wildcard && (info->n_contacts != 1 || !info->has_expires || info->expires != 0)) {
    core_respond_error(svc, txn, 400, "Contact: * needs Expires: 0 and no other Contact");
    return;
  }
  /* RFC 5626 6: outbound needs the registrar to be the first hop (we have
   * no Path support). A REGISTER that came through another proxy and asks
   * for outbound gets 439; one that does not ask is registered as usual. */
  for (guint i = 0; i < info->n_contacts && !info->direct; i++) {
    const CoreContact *c = &info->contacts[i];
    if (binding_key(c->instance, c->reg_id, info->outbound) == KEY_INSTANCE_REG_ID) {
      core_respond_error(svc, txn, 439, "First Hop Lacks Outbound Support");
      return;
    }
  }
  if (info->call_id == NULL || *info->call_id == '\0') {
    core_respond_error(svc, txn, 400, "Missing Call-ID");
    return;
  }

  /* Step 2 and 4: digest, and only the AOR itself. */
  g_autofree char *user_aor =
      core_auth_authenticate(svc, txn, "REGISTER", info->request_uri, strrchr(aor, '@') + 1,
                             info->peer_addr, info->authorization, NULL);
  if (user_aor == NULL)
    return;
  if (g_strcmp0(user_aor, aor) != 0) {
    g_message("REGISTER for %s refused: authenticated as %s", aor, user_aor);
    core_respond_error(svc, txn, 403, "Only the AOR itself may register its bindings");
    return;
  }
  if (!core_limit_take(svc, txn, CORE_LIMIT_REGISTER_USER, aor))
    return;

  gint64 now = svc->port.now(svc->port_data);
  g_autoptr(GPtrArray) bindings = core_registrar_current_bindings(svc, aor, now, &error);
  if (bindings == NULL) {
    g_warning("cannot read the bindings of %s: %s", aor, error->message);
    core_respond_error(svc, txn, 500, "Registration store unavailable");
    return;
  }
  gboolean outbound_used = FALSE;

  if (wildcard) {
    /* Step 6: Contact: * removes every binding, unless it is out of order. */
    for (guint i = 0; i < bindings->len; i++) {
      StoreBinding *b = g_ptr_array_index(bindings, i);
      if (g_strcmp0(b->call_id, info->call_id) == 0 && info->cseq <= b->cseq) {
        core_respond_error(svc, txn, 500, "Out-of-order REGISTER: CSeq not above the binding's");
        return;
      }
    }
    g_ptr_array_set_size(bindings, 0);
  } else {
    /* Step 5: every expiry first, so that a 423 changes nothing. */
    for (guint i = 0; i < info->n_contacts; i++) {
      const CoreContact *c = &info->contacts[i];
      guint32 asked = c->has_expires      ? c->expires
                      : info->has_expires ? info->expires
                                          : svc->cfg.reg_default_expires;
      if (asked != 0 && asked < svc->cfg.reg_min_expires) {
        CoreResponse resp = {
            .status = 423,
            .phrase = "Interval Too Brief",
            .min_expires = svc->cfg.reg_min_expires,
        };
        core_respond(svc, txn, &resp);
        return;
      }
    }
    /* Step 7: apply each Contact. A binding this request already set (the
     * same Contact twice) is not out of order against itself: the later one
     * wins. */
    g_autoptr(GPtrArray) touched = g_ptr_array_new();
    guint before = bindings->len;
    for (guint i = 0; i < info->n_contacts; i++) {
      const CoreContact *c = &info->contacts[i];
      guint32 asked = c->has_expires      ? c->expires
                      : info->has_expires ? info->expires
                                          : svc->cfg.reg_default_expires;
      guint32 granted = MIN(asked, svc->cfg.reg_max_expires);
      StoreBinding *found = NULL;
      guint found_at = 0;
      for (guint j = 0; j < bindings->len && found == NULL; j++) {
        StoreBinding *b = g_ptr_array_index(bindings, j);
        if (binding_matches(b, c, info->outbound)) {
          found = b;
          found_at = j;
        }
      }
      if (found != NULL && !g_ptr_array_find(touched, found, NULL) &&
          g_strcmp0(found->call_id, info->call_id) == 0 && info->cseq <= found->cseq) {
        core_respond_error(svc, txn, 500, "Out-of-order REGISTER: CSeq not above the binding's");
        return;
      }
      if (binding_key(c->instance, c->reg_id, info->outbound) == KEY_INSTANCE_REG_ID)
        outbound_used = TRUE;
      if (granted == 0) {
        if (found != NULL) {
          g_ptr_array_remove(touched, found);
          g_ptr_array_remove_index(bindings, found_at);
        }
        continue;
      }
      if (found == NULL) {
        found = g_new0(StoreBinding, 1);
        g_ptr_array_add(bindings, found);
      }
      if (!g_ptr_array_find(touched, found, NULL))
        g_ptr_array_add(touched, found);
      g_free(found->contact);
      found->contact = g_strdup(c->uri);
      g_free(found->instance);
      found->instance = g_strdup(c->instance);
      /* RFC 5626 5.2: a reg-id without an instance means nothing. */
      found->reg_id = c->instance != NULL && info->outbound ? c->reg_id : 0;
      g_free(found->flow_token);
      found->flow_token = g_strdup(info->flow_token);
      g_free(found->call_id);
      found->call_id = g_strdup(info->call_id);
      found->cseq = info->cseq;
      found->expires_at = now + granted;
      found->q = c->q >= 0 && c->q <= 1 ? c->q : -1;
    }
    /* Only a request that adds bindings is refused: after a reload lowered
     * the limit, an AOR above it can still refresh and remove its own. */
    if (bindings->len > svc->cfg.reg_max_bindings && bindings->len > before) {
      g_autofree char *phrase =
          g_strdup_printf("Too many bindings for this AOR (limit %u)", svc->cfg.reg_max_bindings);
      core_respond_error(svc, txn, 403, phrase);
      return;
    }
  }

  if (info->n_contacts > 0 && !store_reg_put(svc->store, aor, bindings, &error)) {
    g_autofree char *what = g_strdup_printf("cannot store the bindings of %s", aor);
    if (core_respond_if_store_full(svc, txn, what, error))
      return;
    g_warning("cannot store the bindings of %s: %s", aor, error->message);
    core_respond_error(svc, txn,
                       g_error_matches(error, STORE_ERROR, STORE_ERROR_INVALID) ? 400 : 500,
                       g_error_matches(error, STORE_ERROR, STORE_ERROR_INVALID)
                           ? "Contact, Call-ID or instance too long or invalid"
                           : "Registration store unavailable");
    return;
  }
  if (info->n_contacts > 0)
    g_info("REGISTER %s: %u binding(s)", aor, bindings->len);
  registrar_ok(svc, txn, bindings, now, outbound_used);
}
