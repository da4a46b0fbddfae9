/* storage internals shared with the storage tests: on-disk names and limits.
 * Nothing outside storage/ and tests/unit/storage may include this. */
#pragma once

#include "storage/store.h"

G_BEGIN_DECLS

/* Named LMDB databases. */
#define STORE_DBI_META "meta"
#define STORE_DBI_CREDENTIALS "credentials"
#define STORE_DBI_USERS "users"
#define STORE_DBI_REGISTRATIONS "registrations" /* AOR -> bindings record */
#define STORE_DBI_CHANGES "changes"             /* big-endian guint64 seq -> change record */

/* meta key of the schema version; the value is a big-endian guint32. A store
 * whose meta lacks it predates versioning: schema 0. */
#define STORE_META_SCHEMA_VERSION "schema-version"
/* meta key of the master-key id: 16 lower-case hex digits, no terminator. */
#define STORE_META_MASTER_KEY_ID "master-key-id"

/* Schema history:
 *   0: users and credentials (format 1), no version recorded;
 *   1: + registrations and changes tables (both unused), version recorded;
 *   2: credentials in format 2 (key kind, wrapped PKCS#8, key id), every
 *      credential and user write appends to changes, master-key id in meta.
 *      Older builds must not write here: they would skip the change log.
 *      Registration records (format 1) were added later within schema 2: the
 *      table existed empty in every store, and older builds never read it. */

/* Every record value is a GVariant "(qv)": record-format version, then the
 * body whose type that version fixes. */
#define STORE_RECORD_TYPE "(qv)"
/* cert DER, notBefore, notAfter, updated, version, etag,
 * key kind (always 0), key blob (always empty). Read, never written. */
#define STORE_CRED_BODY_TYPE_V1 "(ayxxxtsyay)"
/* cert DER, notBefore, notAfter, updated, version, etag, key kind
 * (StoreKeyKind), key blob, master-key id (only for SERVER_HELD, else "").
 * The blob is the PKCS#8 as given for USER_ENCRYPTED and, for SERVER_HELD,
 * nonce (12) || AES-256-GCM ciphertext || tag (16) with additional data
 * AOR || version as big-endian guint64. */
#define STORE_CRED_BODY_TYPE_V2 "(ayxxxtsyays)"
#define STORE_CRED_RECORD_VERSION 2
#define STORE_USER_RECORD_VERSION 1
/* realm, HA1 SHA-256, HA1 MD5, flags */
#define STORE_USER_BODY_TYPE_V1 "(sssu)"
#define STORE_CHANGE_RECORD_VERSION 1
/* AOR, StoreChangeKind, unix seconds */
#define STORE_CHANGE_BODY_TYPE_V1 "(sux)"
#define STORE_REG_RECORD_VERSION 1
/* The bindings of one AOR: contact, instance ("" none), reg-id, flow token
 * ("" none), Call-ID, CSeq, expiry (unix seconds), q (-1 when absent). */
#define STORE_REG_BODY_TYPE_V1 "a(ssussuxd)"

/* Key wrapping. */
#define STORE_WRAP_NONCE_SIZE 12
#define STORE_WRAP_TAG_SIZE 16
#define STORE_KEY_ID_CONTEXT "sipcred-master-key-id"
#define STORE_KEY_ID_HEX_LEN 16

#define STORE_MAP_SIZE_DEFAULT (G_GUINT64_CONSTANT(64) << 20)
/* The map doubles on demand up to this many bytes. */
#define STORE_MAP_SIZE_MAX (G_GUINT64_CONSTANT(64) << 30)

/* Largest certificate accepted by store_cred_put(). */
#define STORE_CERT_MAX_SIZE (256 * 1024)
/* Largest PKCS#8 blob accepted by store_cred_put() (an RSA-16384 key is ~9 KiB). */
#define STORE_PKCS8_MAX_SIZE (64 * 1024)

/* Limits of store_reg_put(): bindings per AOR, and bytes per string. */
#define STORE_REG_BINDINGS_MAX 64
#define STORE_REG_CONTACT_MAX 4096
#define STORE_REG_FIELD_MAX 1024 /* instance, flow token, Call-ID */

G_END_DECLS
