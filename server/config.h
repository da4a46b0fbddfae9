/* server/config: the one GKeyFile configuration of sipcredd and sipcred.
 * Every key, its default and its meaning are in data/sipcredd.conf.example
 * and sipcredd.conf(5). */
#pragma once

#include <glib.h>

#include "core/core.h"

G_BEGIN_DECLS

#define SRV_CONFIG_ERROR (srv_config_error_quark())
GQuark srv_config_error_quark(void);

typedef enum {
  SRV_CONFIG_ERROR_SYNTAX, /* not a key file */
  SRV_CONFIG_ERROR_KEY,    /* a key is missing, unknown or has a bad value */
} SrvConfigError;

typedef struct {
  char *name;      /* lower case */
  char *cert_file; /* PEM, leaf first, chain may follow; absolute */
  char *key_file;  /* PEM private key; absolute */
} SrvDomain;

typedef struct {
  char *path; /* the file read (absolute) */

  /* [server] */
  GStrv domains;        /* served domains, lower case; first is the default */
  GStrv listen;         /* "ADDR:PORT", IPv6 as "[ADDR]:PORT" */
  char *state_dir;      /* LMDB directory; absolute */
  char *control_socket; /* UNIX socket for sipcred stats; absolute */
  char *metrics_listen; /* [metrics] listen, "ADDR:PORT" on loopback, or NULL */
  guint shutdown_timeout_ms;
  gboolean verbose;

  /* [tls] */
  char *tls_priority; /* before the enforced floor is appended */
  guint handshake_timeout_ms;
  guint idle_timeout_ms;
  guint message_timeout_ms; /* first byte to end of one message (slowloris) */
  guint max_connections;
  guint max_connections_per_ip;
  gsize max_message_size;

  /* [domain NAME] groups, one per served domain */
  GPtrArray *domain_certs; /* of SrvDomain* */

  /* [certificate] and [fanout] */
  CoreConfig core; /* core.domains points at domains */

  /* [identity]: RFC 4474 signing of every NOTIFY */
  gboolean identity_enabled;
  char *identity_algorithm;    /* "rsa-sha256" or "rsa-sha1" */
  char *identity_backend;      /* "auto", "gnutls" or "openssl" */
  guint identity_threads;      /* 0: one per core */
  char *identity_info_url;     /* operator's URL, "{domain}" replaced; NULL: built-in */
  GStrv identity_https_listen; /* built-in endpoint, "ADDR:PORT" */
  char *identity_public_host;  /* host of the built-in URL; NULL: the listen address */

  /* [store] */
  guint64 map_size;
  guint64 map_size_max; /* the map grows no further; writes then get STORE_ERROR_FULL */
  char *master_key;     /* absolute path of the master key file; NULL when not set */
} SrvConfig;

/* Loads and validates @path. On error the message names the group, key and
 * line, and says why ("sipcredd.conf:12: [tls] idle-timeout: not a number"). */
SrvConfig *srv_config_load(const char *path, GError **error);
void srv_config_free(SrvConfig *cfg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SrvConfig, srv_config_free)

/* The default priority string (see sipcredd.conf(5)). */
/* The default priority string (see sipcredd.conf(5)): TLS 1.3 and 1.2, the
 * forward-secret AEAD suites first (server precedence), and still the RFC 6072
 * section 10.5 suites TLS_RSA_WITH_AES_128_CBC_SHA and _SHA256; NORMAL alone
 * lacks the SHA256 MAC that the second one needs. */
#define SRV_TLS_PRIORITY_DEFAULT                                                                  \
  "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+CHACHA20-POLY1305:"       \
  "+AES-128-GCM:+AES-256-CCM:+AES-128-CCM:+AES-256-CBC:+AES-128-CBC:-KX-ALL:+ECDHE-ECDSA:"        \
  "+ECDHE-RSA:+DHE-RSA:+RSA:+SHA256:%SERVER_PRECEDENCE"

G_END_DECLS
