/* storage internals shared with the storage tests: on-disk names and limits.
 * Nothing outside storage/ and tests/unit/storage may include this. */
#pragma once

#include "storage/store.h"

G_BEGIN_DECLS

/* Named LMDB databases. */
#define STORE_DBI_META "meta"
#define STORE_DBI_CREDENTIALS "credentials"
#define STORE_DBI_USERS "users"
#define STORE_DBI_REGISTRATIONS "registrations" /* reserved, created empty */
#define STORE_DBI_CHANGES "changes"             /* reserved, created empty */

/* meta key of the schema version; the value is a big-endian guint32. */
#define STORE_META_SCHEMA_VERSION "schema-version"

/* Every record value is a GVariant "(qv)": record-format version, then the
 * body whose type that version fixes. */
#define STORE_RECORD_TYPE "(qv)"
#define STORE_CRED_RECORD_VERSION 1
/* cert DER, notBefore, notAfter, updated, version, etag,
 * key kind (0 = none; reserved for the credential issue), key blob. */
#define STORE_CRED_BODY_TYPE_V1 "(ayxxxtsyay)"
#define STORE_USER_RECORD_VERSION 1
/* realm, HA1 SHA-256, HA1 MD5, flags */
#define STORE_USER_BODY_TYPE_V1 "(sssu)"

#define STORE_MAP_SIZE_DEFAULT (G_GUINT64_CONSTANT(64) << 20)
/* The map doubles on demand up to this many bytes. */
#define STORE_MAP_SIZE_MAX (G_GUINT64_CONSTANT(64) << 30)

/* Largest certificate accepted by store_cred_put_cert(). */
#define STORE_CERT_MAX_SIZE (256 * 1024)

G_END_DECLS
