#define G_LOG_DOMAIN "sipcred-config"

#include "server/config.h"

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>

#include "server/edge.h"

G_DEFINE_QUARK(sipcred - config - error - quark, srv_config_error)

/* Every group and key we know. Unknown keys are errors: a typo must not
 * silently leave a limit at its default. */
static const char *const server_keys[] = {
    "domains", "listen", "state-dir", "shutdown-timeout", "verbose", "control-socket", NULL};
static const char *const metrics_keys[] = {"listen", NULL};
static const char *const tls_keys[] = {"priority",
                                       "handshake-timeout",
                                       "idle-timeout",
                                       "message-timeout",
                                       "max-connections",
                                       "max-connections-per-ip",
                                       "max-message-size",
                                       NULL};
static const char *const domain_keys[] = {"certificate", "key", NULL};
static const char *const certificate_keys[] = {"default-expires", "max-expires", "min-expires",
                                               NULL};
static const char *const fanout_keys[] = {"window", "min-interval", NULL};
static const char *const store_keys[] = {"map-size", "max-map-size", "master-key", NULL};
static const char *const auth_keys[] = {"nonce-lifetime", "free-failures", "lockout-base",
                                        "lockout-max",    "forget-after",  NULL};
static const char *const credential_keys[] = {"generate", "key-bits", "days", NULL};
static const char *const registrar_keys[] = {"default-expires", "min-expires", "max-expires",
                                             "max-bindings", NULL};
static const char *const message_keys[] = {"max-body", NULL};
static const char *const limits_keys[] = {"subscribe-per-source", "subscribe-per-source-burst",
                                          "subscribe-per-aor",    "subscribe-per-aor-burst",
                                          "publish-per-user",     "publish-per-user-burst",
                                          "register-per-user",    "register-per-user-burst",
                                          "message-per-user",     "message-per-user-burst",
                                          "max-entries",          NULL};
static const char *const identity_keys[] = {"enabled",  "algorithm",    "backend",     "threads",
                                            "info-url", "https-listen", "public-host", NULL};

static const struct {
  const char *group;
  const char *const *keys;
} known_groups[] = {
    {"server", server_keys},
    {"tls", tls_keys},
    {"certificate", certificate_keys},
    {"fanout", fanout_keys},
    {"store", store_keys},
    {"auth", auth_keys},
    {"credential", credential_keys},
    {"identity", identity_keys},
    {"registrar", registrar_keys},
    {"message", message_keys},
    {"limits", limits_keys},
    {"metrics", metrics_keys},
};

#define DOMAIN_GROUP_PREFIX "domain "

/* State shared by the helpers below while one file is loaded. */
typedef struct {
  GKeyFile *kf;
  const char *path;
  char **lines; /* the file, for naming the line of a bad key */
  char *dir;    /* relative paths resolve against this */
} Loader;

static void
loader_clear(Loader *ld)
{
  g_clear_pointer(&ld->kf, g_key_file_unref);
  g_clear_pointer(&ld->lines, g_strfreev);
  g_clear_pointer(&ld->dir, g_free);
}

/* Line number (1-based) of @key in [@group], or of the group header when
 * @key is NULL; 0 when not written in the file. */
static guint
loader_find_line(const Loader *ld, const char *group, const char *key)
{
  gboolean in_group = FALSE;
  for (guint i = 0; ld->lines && ld->lines[i]; i++) {
    const char *l = ld->lines[i];
    while (*l == ' ' || *l == '\t')
      l++;
    if (*l == '[') {
      const char *end = strchr(l, ']');
      in_group =
          end && (gsize)(end - l - 1) == strlen(group) && strncmp(l + 1, group, end - l - 1) == 0;
      if (in_group && key == NULL)
        return i + 1;
      continue;
    }
    if (!in_group || key == NULL)
      continue;
    gsize klen = strlen(key);
    if (strncmp(l, key, klen) == 0) {
      const char *r = l + klen;
      while (*r == ' ' || *r == '\t')
        r++;
      if (*r == '=')
        return i + 1;
    }
  }
  return 0;
}

G_GNUC_PRINTF(5, 6)
static gboolean
loader_fail(const Loader *ld, GError **error, const char *group, const char *key, const char *fmt,
            ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *why = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  guint line = loader_find_line(ld, group, key);
  g_autofree char *where = line ? g_strdup_printf("%s:%u", ld->path, line) : g_strdup(ld->path);
  if (key)
    g_set_error(error, SRV_CONFIG_ERROR, SRV_CONFIG_ERROR_KEY, "%s: [%s] %s: %s", where, group,
                key, why);
  else
    g_set_error(error, SRV_CONFIG_ERROR, SRV_CONFIG_ERROR_KEY, "%s: [%s]: %s", where, group, why);
  return FALSE;
}

static gboolean
loader_get_uint(const Loader *ld, const char *group, const char *key, guint64 min, guint64 max,
                guint64 def, guint64 *out, GError **error)
{
  g_autofree char *raw = g_key_file_get_value(ld->kf, group, key, NULL);
  if (raw == NULL) {
    *out = def;
    return TRUE;
  }
  g_strstrip(raw);
  guint64 v = 0;
  g_autoptr(GError) local = NULL;
  if (!g_ascii_string_to_unsigned(raw, 10, min, max, &v, &local))
    return loader_fail(ld, error, group, key,
                       "\"%s\" is not a whole number from %" G_GUINT64_FORMAT
                       " to %" G_GUINT64_FORMAT,
                       raw, min, max);
  *out = v;
  return TRUE;
}

/* A rate in requests per second: a decimal number, fractions allowed. */
static gboolean
loader_get_rate(const Loader *ld, const char *group, const char *key, double max, double def,
                double *out, GError **error)
{
  g_autofree char *raw = g_key_file_get_value(ld->kf, group, key, NULL);
  if (raw == NULL) {
    *out = def;
    return TRUE;
  }
  g_strstrip(raw);
  char *end = NULL;
  double v = g_ascii_strtod(raw, &end);
  /* Only digits and one point: no signs, exponents, "inf" or "nan". */
  gboolean plain = *raw != '\0' && strspn(raw, "0123456789.") == strlen(raw);
  if (!plain || end == raw || *end != '\0' || !(v >= 0 && v <= max))
    return loader_fail(ld, error, group, key,
                       "\"%s\" is not a number of requests per second from 0 to %.0f", raw, max);
  *out = v;
  return TRUE;
}

/* [limits] NAME (rate per second) and NAME-burst. */
static gboolean
loader_get_rate_limit(const Loader *ld, const char *name, CoreRateLimit *limit, GError **error)
{
  g_autofree char *burst_key = g_strconcat(name, "-burst", NULL);
  guint64 v;
  if (!loader_get_rate(ld, "limits", name, 1000000, limit->rate, &limit->rate, error) ||
      !loader_get_uint(ld, "limits", burst_key, 1, 1000000, limit->burst, &v, error))
    return FALSE;
  limit->burst = v;
  return TRUE;
}

static gboolean
loader_get_bool(const Loader *ld, const char *group, const char *key, gboolean def, gboolean *out,
                GError **error)
{
  if (!g_key_file_has_key(ld->kf, group, key, NULL)) {
    *out = def;
    return TRUE;
  }
  g_autoptr(GError) local = NULL;
  gboolean v = g_key_file_get_boolean(ld->kf, group, key, &local);
  if (local)
    return loader_fail(ld, error, group, key, "not true or false");
  *out = v;
  return TRUE;
}

static char *
loader_resolve_path(const Loader *ld, const char *value)
{
  if (g_path_is_absolute(value))
    return g_canonicalize_filename(value, NULL);
  return g_canonicalize_filename(value, ld->dir);
}

/* A semicolon-separated list; empty items are dropped. */
static GStrv
loader_get_list(const Loader *ld, const char *group, const char *key)
{
  g_autofree char *raw = g_key_file_get_value(ld->kf, group, key, NULL);
  if (raw == NULL)
    return NULL;
  g_auto(GStrv) parts = g_strsplit(raw, ";", -1);
  g_autoptr(GStrvBuilder) b = g_strv_builder_new();
  for (guint i = 0; parts[i]; i++) {
    g_strstrip(parts[i]);
    if (*parts[i])
      g_strv_builder_add(b, parts[i]);
  }
  return g_strv_builder_end(b);
}

static gboolean
hostname_is_valid(const char *name)
{
  gsize len = strlen(name);
  if (len == 0 || len > 253 || name[0] == '.' || name[0] == '-' || name[len - 1] == '.')
    return FALSE;
  for (const char *p = name; *p; p++)
    if (!g_ascii_isalnum(*p) && *p != '-' && *p != '.')
      return FALSE;
  return strstr(name, "..") == NULL;
}

static gboolean
listen_is_valid(const char *spec)
{
  const char *colon;
  g_autofree char *host = NULL;
  if (spec[0] == '[') {
    const char *close = strchr(spec, ']');
    if (!close || close[1] != ':')
      return FALSE;
    host = g_strndup(spec + 1, close - spec - 1);
    colon = close + 1;
  } else {
    colon = strrchr(spec, ':');
    if (!colon)
      return FALSE;
    host = g_strndup(spec, colon - spec);
  }
  guint64 port;
  if (!g_ascii_string_to_unsigned(colon + 1, 10, 0, 65535, &port, NULL))
    return FALSE;
  g_autoptr(GInetAddress) addr = g_inet_address_new_from_string(host);
  if (addr == NULL)
    return FALSE;
  /* An IPv6 address must be bracketed, else the port is ambiguous. */
  return spec[0] == '[' ? g_inet_address_get_family(addr) == G_SOCKET_FAMILY_IPV6
                        : g_inet_address_get_family(addr) == G_SOCKET_FAMILY_IPV4;
}

static gboolean
loader_check_known(const Loader *ld, GError **error)
{
  gsize n_groups = 0;
  g_auto(GStrv) groups = g_key_file_get_groups(ld->kf, &n_groups);
  for (gsize i = 0; i < n_groups; i++) {
    const char *const *keys = NULL;
    if (g_str_has_prefix(groups[i], DOMAIN_GROUP_PREFIX)) {
      keys = domain_keys;
    } else {
      for (gsize g = 0; g < G_N_ELEMENTS(known_groups); g++)
        if (g_str_equal(groups[i], known_groups[g].group))
          keys = known_groups[g].keys;
    }
    if (keys == NULL)
      return loader_fail(ld, error, groups[i], NULL, "unknown group");
    g_auto(GStrv) present = g_key_file_get_keys(ld->kf, groups[i], NULL, NULL);
    for (guint k = 0; present && present[k]; k++)
      if (!g_strv_contains(keys, present[k]))
        return loader_fail(ld, error, groups[i], present[k], "unknown key");
  }
  return TRUE;
}

static gboolean
loader_read_server(const Loader *ld, SrvConfig *cfg, GError **error)
{
  cfg->domains = loader_get_list(ld, "server", "domains");
  if (cfg->domains == NULL || cfg->domains[0] == NULL)
    return loader_fail(ld, error, "server", "domains", "required: at least one served domain");
  for (guint i = 0; cfg->domains[i]; i++) {
    char *lower = g_ascii_strdown(cfg->domains[i], -1);
    g_free(cfg->domains[i]);
    cfg->domains[i] = lower;
    if (!hostname_is_valid(lower))
      return loader_fail(ld, error, "server", "domains", "\"%s\" is not a domain name", lower);
    for (guint j = 0; j < i; j++)
      if (g_str_equal(cfg->domains[j], lower))
        return loader_fail(ld, error, "server", "domains", "\"%s\" is listed twice", lower);
  }

  cfg->listen = loader_get_list(ld, "server", "listen");
  if (cfg->listen == NULL || cfg->listen[0] == NULL) {
    g_strfreev(cfg->listen);
    cfg->listen = g_strsplit("127.0.0.1:5061", ";", -1);
  }
  for (guint i = 0; cfg->listen[i]; i++)
    if (!listen_is_valid(cfg->listen[i]))
      return loader_fail(ld, error, "server", "listen",
                         "\"%s\" is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)", cfg->listen[i]);

  g_autofree char *state = g_key_file_get_value(ld->kf, "server", "state-dir", NULL);
  if (state == NULL || *g_strstrip(state) == '\0')
    return loader_fail(ld, error, "server", "state-dir", "required: directory of the store");
  cfg->state_dir = loader_resolve_path(ld, state);

  g_autofree char *control = g_key_file_get_value(ld->kf, "server", "control-socket", NULL);
  cfg->control_socket = control != NULL && *g_strstrip(control) != '\0'
                            ? loader_resolve_path(ld, control)
                            : g_build_filename(cfg->state_dir, "control.sock", NULL);
  /* sun_path holds 108 bytes with the NUL. */
  if (strlen(cfg->control_socket) >= 108)
    return loader_fail(ld, error, "server", "control-socket",
                       "%s is longer than a UNIX socket path may be (107 bytes)",
                       cfg->control_socket);
  g_autofree char *metrics = g_key_file_get_value(ld->kf, "metrics", "listen", NULL);
  if (metrics != NULL && *g_strstrip(metrics) != '\0') {
    if (!listen_is_valid(metrics))
      return loader_fail(ld, error, "metrics", "listen",
                         "\"%s\" is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)", metrics);
    g_autofree char *host = metrics[0] == '['
                                ? g_strndup(metrics + 1, strcspn(metrics + 1, "]"))
                                : g_strndup(metrics, strrchr(metrics, ':') - metrics);
    g_autoptr(GInetAddress) ip = g_inet_address_new_from_string(host);
    if (ip == NULL || !g_inet_address_get_is_loopback(ip))
      return loader_fail(ld, error, "metrics", "listen",
                         "\"%s\" is not a loopback address: the counters are not for the "
                         "network",
                         metrics);
    cfg->metrics_listen = g_steal_pointer(&metrics);
  }

  guint64 v;
  if (!loader_get_uint(ld, "server", "shutdown-timeout", 0, 600000, 3000, &v, error))
    return FALSE;
  cfg->shutdown_timeout_ms = v;
  return loader_get_bool(ld, "server", "verbose", FALSE, &cfg->verbose, error);
}

static gboolean
loader_read_tls(const Loader *ld, SrvConfig *cfg, GError **error)
{
  g_autofree char *prio = g_key_file_get_value(ld->kf, "tls", "priority", NULL);
  cfg->tls_priority =
      prio ? g_strstrip(g_steal_pointer(&prio)) : g_strdup(SRV_TLS_PRIORITY_DEFAULT);
  /* Validate with the enforced floor appended, exactly as the edge uses it. */
  g_autofree char *full = g_strconcat(cfg->tls_priority, EDGE_TLS_PRIORITY_FLOOR, NULL);
  gnutls_priority_t p = NULL;
  const char *err_pos = NULL;
  int rc = gnutls_priority_init(&p, full, &err_pos);
  if (rc < 0)
    return loader_fail(ld, error, "tls", "priority", "GnuTLS rejects it near \"%.20s\": %s",
                       err_pos ? err_pos : "", gnutls_strerror(rc));
  gnutls_priority_deinit(p);

  guint64 v;
  if (!loader_get_uint(ld, "tls", "handshake-timeout", 100, 600000, 10000, &v, error))
    return FALSE;
  cfg->handshake_timeout_ms = v;
  if (!loader_get_uint(ld, "tls", "idle-timeout", 100, 86400000, 900000, &v, error))
    return FALSE;
  cfg->idle_timeout_ms = v;
  if (!loader_get_uint(ld, "tls", "message-timeout", 100, 3600000, 30000, &v, error))
    return FALSE;
  cfg->message_timeout_ms = v;
  if (!loader_get_uint(ld, "tls", "max-connections", 1, 1000000, 10000, &v, error))
    return FALSE;
  cfg->max_connections = v;
  if (!loader_get_uint(ld, "tls", "max-connections-per-ip", 1, 1000000, 200, &v, error))
    return FALSE;
  cfg->max_connections_per_ip = v;
  /* Below ~1 KiB no real SIP request fits; above 16 MiB a peer could pin memory. */
  if (!loader_get_uint(ld, "tls", "max-message-size", 1024, 16 * 1024 * 1024, 65535, &v, error))
    return FALSE;
  cfg->max_message_size = v;
  return TRUE;
}

static void
srv_domain_free(SrvDomain *d)
{
  g_free(d->name);
  g_free(d->cert_file);
  g_free(d->key_file);
  g_free(d);
}

static gboolean
loader_read_domains(const Loader *ld, SrvConfig *cfg, GError **error)
{
  cfg->domain_certs = g_ptr_array_new_with_free_func((GDestroyNotify)srv_domain_free);
  for (guint i = 0; cfg->domains[i]; i++) {
    g_autofree char *group = g_strconcat(DOMAIN_GROUP_PREFIX, cfg->domains[i], NULL);
    if (!g_key_file_has_group(ld->kf, group))
      return loader_fail(ld, error, "server", "domains",
                         "\"%s\" has no [%s] group with its certificate and key", cfg->domains[i],
                         group);
    SrvDomain *d = g_new0(SrvDomain, 1);
    d->name = g_strdup(cfg->domains[i]);
    g_ptr_array_add(cfg->domain_certs, d);
    const char *keys[] = {"certificate", "key"};
    char **dest[] = {&d->cert_file, &d->key_file};
    for (guint k = 0; k < 2; k++) {
      g_autofree char *raw = g_key_file_get_value(ld->kf, group, keys[k], NULL);
      if (raw == NULL || *g_strstrip(raw) == '\0')
        return loader_fail(ld, error, group, keys[k], "required");
      *dest[k] = loader_resolve_path(ld, raw);
      if (g_access(*dest[k], R_OK) != 0)
        return loader_fail(ld, error, group, keys[k], "cannot read %s: %s", *dest[k],
                           g_strerror(errno));
    }
    /* A private key others can read is no longer private. Group access is
     * allowed: Debian's ssl-cert group shares keys that way (0640). */
    GStatBuf st;
    if (g_stat(d->key_file, &st) == 0 && (st.st_mode & S_IRWXO) != 0)
      return loader_fail(ld, error, group, "key",
                         "%s is readable or writable by others (mode %04o); chmod o-rwx it",
                         d->key_file, (unsigned)(st.st_mode & 07777));
    /* The pair must load and match now, not at the first handshake. */
    gnutls_certificate_credentials_t creds;
    gnutls_certificate_allocate_credentials(&creds);
    int rc = gnutls_certificate_set_x509_key_file2(creds, d->cert_file, d->key_file,
                                                   GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_certificate_free_credentials(creds);
    if (rc < 0)
      return loader_fail(ld, error, group, "certificate", "%s with %s: %s", d->cert_file,
                         d->key_file, gnutls_strerror(rc));
  }
  /* A [domain X] group for a domain we do not serve is most likely a typo. */
  g_auto(GStrv) groups = g_key_file_get_groups(ld->kf, NULL);
  for (guint i = 0; groups[i]; i++)
    if (g_str_has_prefix(groups[i], DOMAIN_GROUP_PREFIX) &&
        !g_strv_contains((const char *const *)cfg->domains,
                         groups[i] + strlen(DOMAIN_GROUP_PREFIX)))
      return loader_fail(ld, error, groups[i], NULL, "not listed in [server] domains");
  return TRUE;
}

static gboolean
loader_read_core(const Loader *ld, SrvConfig *cfg, GError **error)
{
  CoreConfig *c = &cfg->core;
  core_config_init_defaults(c);
  c->domains = (const char *const *)cfg->domains;
  guint64 v;
  if (!loader_get_uint(ld, "certificate", "default-expires", 1, G_MAXUINT32, c->default_expires,
                       &v, error))
    return FALSE;
  c->default_expires = v;
  if (!loader_get_uint(ld, "certificate", "max-expires", 1, G_MAXUINT32, c->max_expires, &v,
                       error))
    return FALSE;
  c->max_expires = v;
  if (!loader_get_uint(ld, "certificate", "min-expires", 1, G_MAXUINT32, c->min_expires, &v,
                       error))
    return FALSE;
  c->min_expires = v;
  if (c->min_expires > c->max_expires)
    return loader_fail(ld, error, "certificate", "min-expires", "%u is more than max-expires (%u)",
                       c->min_expires, c->max_expires);
  if (c->default_expires > c->max_expires || c->default_expires < c->min_expires)
    return loader_fail(ld, error, "certificate", "default-expires",
                       "%u is outside min-expires..max-expires (%u..%u)", c->default_expires,
                       c->min_expires, c->max_expires);
  if (!loader_get_uint(ld, "fanout", "window", 1, 100000, c->notify_window, &v, error))
    return FALSE;
  c->notify_window = v;
  if (!loader_get_uint(ld, "fanout", "min-interval", 0, 86400, c->min_notify_interval, &v, error))
    return FALSE;
  c->min_notify_interval = v;

  if (!loader_get_uint(ld, "registrar", "min-expires", 1, 86400, c->reg_min_expires, &v, error))
    return FALSE;
  c->reg_min_expires = v;
  if (!loader_get_uint(ld, "registrar", "max-expires", 1, 7 * 86400, c->reg_max_expires, &v,
                       error))
    return FALSE;
  c->reg_max_expires = v;
  if (c->reg_min_expires > c->reg_max_expires)
    return loader_fail(ld, error, "registrar", "min-expires", "%u is more than max-expires (%u)",
                       c->reg_min_expires, c->reg_max_expires);
  if (!loader_get_uint(ld, "registrar", "default-expires", 1, 7 * 86400, c->reg_default_expires,
                       &v, error))
    return FALSE;
  c->reg_default_expires = v;
  if (c->reg_default_expires > c->reg_max_expires || c->reg_default_expires < c->reg_min_expires)
    return loader_fail(ld, error, "registrar", "default-expires",
                       "%u is outside min-expires..max-expires (%u..%u)", c->reg_default_expires,
                       c->reg_min_expires, c->reg_max_expires);
  if (!loader_get_uint(ld, "registrar", "max-bindings", 1, 64, c->reg_max_bindings, &v, error))
    return FALSE;
  c->reg_max_bindings = v;
  if (!loader_get_uint(ld, "message", "max-body", 0, 1024 * 1024, (guint)c->message_max_body, &v,
                       error))
    return FALSE;
  c->message_max_body = v;

  CoreRateLimits *rl = &c->rate_limits;
  if (!loader_get_rate_limit(ld, "subscribe-per-source", &rl->subscribe_per_source, error) ||
      !loader_get_rate_limit(ld, "subscribe-per-aor", &rl->subscribe_per_aor, error) ||
      !loader_get_rate_limit(ld, "publish-per-user", &rl->publish_per_user, error) ||
      !loader_get_rate_limit(ld, "register-per-user", &rl->register_per_user, error) ||
      !loader_get_rate_limit(ld, "message-per-user", &rl->message_per_user, error))
    return FALSE;
  if (!loader_get_uint(ld, "limits", "max-entries", 100, 10000000, rl->max_entries, &v, error))
    return FALSE;
  rl->max_entries = v;

  if (!loader_get_uint(ld, "auth", "nonce-lifetime", 10, 86400, c->nonce_lifetime, &v, error))
    return FALSE;
  c->nonce_lifetime = v;
  CoreDigestLimits *lim = &c->digest_limits;
  if (!loader_get_uint(ld, "auth", "free-failures", 0, 1000, lim->free_failures, &v, error))
    return FALSE;
  lim->free_failures = v;
  if (!loader_get_uint(ld, "auth", "lockout-base", 1, 86400, lim->base_delay_s, &v, error))
    return FALSE;
  lim->base_delay_s = v;
  if (!loader_get_uint(ld, "auth", "lockout-max", 1, 7 * 86400, lim->max_delay_s, &v, error))
    return FALSE;
  lim->max_delay_s = v;
  if (lim->max_delay_s < lim->base_delay_s)
    return loader_fail(ld, error, "auth", "lockout-max", "%u is less than lockout-base (%u)",
                       lim->max_delay_s, lim->base_delay_s);
  if (!loader_get_uint(ld, "auth", "forget-after", 1, 30 * 86400, lim->forget_after_s, &v, error))
    return FALSE;
  lim->forget_after_s = v;

  if (!loader_get_bool(ld, "credential", "generate", c->generate_credentials,
                       &c->generate_credentials, error))
    return FALSE;
  if (!loader_get_uint(ld, "credential", "key-bits", 2048, 3072, c->generate_key_bits, &v, error))
    return FALSE;
  if (v != 2048 && v != 3072)
    return loader_fail(ld, error, "credential", "key-bits",
                       "%" G_GUINT64_FORMAT " is neither 2048 nor 3072", v);
  c->generate_key_bits = v;
  if (!loader_get_uint(ld, "credential", "days", 1, 365, c->generate_days, &v, error))
    return FALSE;
  c->generate_days = v;

  if (!loader_get_uint(ld, "store", "map-size", 1024 * 1024, G_MAXINT64, 64 * 1024 * 1024,
                       &cfg->map_size, error))
    return FALSE;
  /* The default is storage's own ceiling, 64 GiB. */
  if (!loader_get_uint(ld, "store", "max-map-size", 1024 * 1024, G_MAXINT64,
                       G_GUINT64_CONSTANT(64) << 30, &cfg->map_size_max, error))
    return FALSE;
  if (cfg->map_size_max < cfg->map_size)
    return loader_fail(ld, error, "store", "max-map-size",
                       "%" G_GUINT64_FORMAT " is smaller than map-size (%" G_GUINT64_FORMAT ")",
                       cfg->map_size_max, cfg->map_size);
  return TRUE;
}

static gboolean
loader_read_store(const Loader *ld, SrvConfig *cfg, GError **error)
{
  /* Only the path: the file is checked (mode, size, id) where it is loaded,
   * and `sipcred keygen` must be able to name a file that does not exist yet. */
  g_autofree char *key = g_key_file_get_value(ld->kf, "store", "master-key", NULL);
  if (key == NULL && cfg->core.generate_credentials)
    return loader_fail(ld, error, "credential", "generate",
                       "generated keys are held by the server: set [store] master-key");
  if (key == NULL)
    return TRUE;
  if (*g_strstrip(key) == '\0')
    return loader_fail(ld, error, "store", "master-key",
                       "empty; leave the key out when there is no master key");
  cfg->master_key = loader_resolve_path(ld, key);
  return TRUE;
}

static gboolean
loader_read_identity(const Loader *ld, SrvConfig *cfg, GError **error)
{
  if (!loader_get_bool(ld, "identity", "enabled", TRUE, &cfg->identity_enabled, error))
    return FALSE;
  g_autofree char *alg = g_key_file_get_value(ld->kf, "identity", "algorithm", NULL);
  cfg->identity_algorithm = g_strdup(alg != NULL ? g_strstrip(alg) : "rsa-sha256");
  if (!g_str_equal(cfg->identity_algorithm, "rsa-sha256") &&
      !g_str_equal(cfg->identity_algorithm, "rsa-sha1"))
    return loader_fail(ld, error, "identity", "algorithm",
                       "\"%s\" is neither rsa-sha256 nor rsa-sha1", cfg->identity_algorithm);
  g_autofree char *backend = g_key_file_get_value(ld->kf, "identity", "backend", NULL);
  cfg->identity_backend = g_strdup(backend != NULL ? g_strstrip(backend) : "auto");
  if (!g_str_equal(cfg->identity_backend, "auto") &&
      !g_str_equal(cfg->identity_backend, "gnutls") &&
      !g_str_equal(cfg->identity_backend, "openssl"))
    return loader_fail(ld, error, "identity", "backend", "\"%s\" is not auto, gnutls or openssl",
                       cfg->identity_backend);
  guint64 v;
  if (!loader_get_uint(ld, "identity", "threads", 0, 256, 0, &v, error))
    return FALSE;
  cfg->identity_threads = v;

  g_autofree char *url = g_key_file_get_value(ld->kf, "identity", "info-url", NULL);
  if (url != NULL && *g_strstrip(url) != '\0') {
    if (!g_str_has_prefix(url, "https://") && !g_str_has_prefix(url, "http://"))
      return loader_fail(ld, error, "identity", "info-url", "\"%s\" is not an http(s) URL", url);
    if (strpbrk(url, " \t<>\"") != NULL)
      return loader_fail(ld, error, "identity", "info-url",
                         "may not contain blanks, quotes or angle brackets");
    cfg->identity_info_url = g_steal_pointer(&url);
  }
  cfg->identity_https_listen = loader_get_list(ld, "identity", "https-listen");
  if (cfg->identity_https_listen == NULL || cfg->identity_https_listen[0] == NULL) {
    /* Zero configuration: the host of the first SIP listener, any free port.
     * An operator sets a fixed one so that the URL stays the same. */
    g_strfreev(cfg->identity_https_listen);
    const char *first = cfg->listen[0];
    const char *colon = strrchr(first, ':');
    g_autofree char *host = g_strndup(first, colon - first);
    cfg->identity_https_listen = g_new0(char *, 2);
    cfg->identity_https_listen[0] = g_strdup_printf("%s:0", host);
  }
  for (guint i = 0; cfg->identity_https_listen[i] != NULL; i++) {
    const char *a = cfg->identity_https_listen[i];
    const char *colon = strrchr(a, ':');
    guint64 port;
    if (colon == NULL || colon == a ||
        !g_ascii_string_to_unsigned(colon + 1, 10, 0, 65535, &port, NULL))
      return loader_fail(ld, error, "identity", "https-listen",
                         "\"%s\" is not ADDRESS:PORT ([ADDRESS]:PORT for IPv6)", a);
  }
  g_autofree char *host = g_key_file_get_value(ld->kf, "identity", "public-host", NULL);
  if (host != NULL && *g_strstrip(host) != '\0') {
    if (strpbrk(host, " \t<>\"/") != NULL)
      return loader_fail(ld, error, "identity", "public-host", "\"%s\" is not a host name", host);
    cfg->identity_public_host = g_steal_pointer(&host);
  }
  return TRUE;
}

SrvConfig *
srv_config_load(const char *path, GError **error)
{
  g_return_val_if_fail(path != NULL, NULL);

  Loader ld = {0};
  g_autofree char *abs = g_canonicalize_filename(path, NULL);
  ld.path = abs;
  ld.dir = g_path_get_dirname(abs);
  g_autofree char *contents = NULL;
  gsize len = 0;
  if (!g_file_get_contents(abs, &contents, &len, error)) {
    loader_clear(&ld);
    return NULL;
  }
  ld.lines = g_strsplit(contents, "\n", -1);
  ld.kf = g_key_file_new();
  g_autoptr(GError) local = NULL;
  if (!g_key_file_load_from_data(ld.kf, contents, len, G_KEY_FILE_NONE, &local)) {
    g_set_error(error, SRV_CONFIG_ERROR, SRV_CONFIG_ERROR_SYNTAX, "%s: %s", abs, local->message);
    loader_clear(&ld);
    return NULL;
  }

  g_autoptr(SrvConfig) cfg = g_new0(SrvConfig, 1);
  cfg->path = g_strdup(abs);
  gboolean ok = loader_check_known(&ld, error) && loader_read_server(&ld, cfg, error) &&
                loader_read_tls(&ld, cfg, error) && loader_read_domains(&ld, cfg, error) &&
                loader_read_core(&ld, cfg, error) && loader_read_store(&ld, cfg, error) &&
                loader_read_identity(&ld, cfg, error);
  loader_clear(&ld);
  return ok ? g_steal_pointer(&cfg) : NULL;
}

void
srv_config_free(SrvConfig *cfg)
{
  if (cfg == NULL)
    return;
  g_free(cfg->path);
  g_strfreev(cfg->domains);
  g_strfreev(cfg->listen);
  g_free(cfg->state_dir);
  g_free(cfg->control_socket);
  g_free(cfg->metrics_listen);
  g_free(cfg->tls_priority);
  g_free(cfg->master_key);
  g_free(cfg->identity_algorithm);
  g_free(cfg->identity_backend);
  g_free(cfg->identity_info_url);
  g_strfreev(cfg->identity_https_listen);
  g_free(cfg->identity_public_host);
  g_clear_pointer(&cfg->domain_certs, g_ptr_array_unref);
  g_free(cfg);
}
