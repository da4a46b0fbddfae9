/* What the crash writer writes and the crash test verifies: every value
 * carries its own sequence number and a SHA-256 over itself, so a partial
 * or misplaced record cannot pass. */
#pragma once

#include <string.h>

#include <glib.h>

/* Tiny on purpose: the map grows (and is killed while growing) early on. */
#define CRASH_MAP_SIZE (64 * 1024)
#define CRASH_DIGEST_LEN 32

/* Even writes carry a server-held key; every fifth also writes a user. */
static inline gboolean
crash_is_keyed(guint64 seq)
{
  return seq % 2 == 0;
}

static inline gboolean
crash_has_user(guint64 seq)
{
  return seq % 5 == 0;
}

static inline char *
crash_aor(guint64 seq)
{
  return g_strdup_printf("sip:crash-%012" G_GUINT64_FORMAT "@example.com", seq);
}

/* The seq of a crash AOR, or 0. */
static inline guint64
crash_aor_seq(const char *aor)
{
  const char *prefix = "sip:crash-";
  char *end = NULL;
  guint64 seq;

  if (!g_str_has_prefix(aor, prefix))
    return 0;
  seq = g_ascii_strtoull(aor + strlen(prefix), &end, 10);
  if (end == NULL || strcmp(end, "@example.com") != 0)
    return 0;
  return seq;
}

/* seq (8 bytes, big-endian) | tag | filler of seq-dependent length |
 * SHA-256 of everything before it. Lengths up to ~4 KiB use LMDB overflow
 * pages, whose writes span several pages. */
static inline GBytes *
crash_payload_new(guint64 seq, char tag)
{
  gsize len = 9 + (gsize)((seq * 2654435761u) % 4000) + CRASH_DIGEST_LEN;
  guint8 *buf = g_malloc(len);
  guint64 be = GUINT64_TO_BE(seq);
  GChecksum *sha = g_checksum_new(G_CHECKSUM_SHA256);
  gsize digest_len = CRASH_DIGEST_LEN;
  guint32 x = (guint32)seq * 2246822519u + (guint8)tag;

  memcpy(buf, &be, sizeof be);
  buf[8] = (guint8)tag;
  for (gsize i = 9; i < len - CRASH_DIGEST_LEN; i++) {
    x = x * 1664525u + 1013904223u;
    buf[i] = (guint8)(x >> 24);
  }
  g_checksum_update(sha, buf, len - CRASH_DIGEST_LEN);
  g_checksum_get_digest(sha, buf + len - CRASH_DIGEST_LEN, &digest_len);
  g_checksum_free(sha);
  return g_bytes_new_take(buf, len);
}

static inline gboolean
crash_payload_check(const guint8 *p, gsize len, guint64 seq, char tag)
{
  guint8 digest[CRASH_DIGEST_LEN];
  gsize digest_len = sizeof digest;
  GChecksum *sha;
  guint64 be = GUINT64_TO_BE(seq);

  if (len < 9 + CRASH_DIGEST_LEN || memcmp(p, &be, sizeof be) != 0 || p[8] != (guint8)tag)
    return FALSE;
  sha = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(sha, p, len - CRASH_DIGEST_LEN);
  g_checksum_get_digest(sha, digest, &digest_len);
  g_checksum_free(sha);
  return memcmp(digest, p + len - CRASH_DIGEST_LEN, CRASH_DIGEST_LEN) == 0;
}

static inline void
crash_der_append(GByteArray *out, guint8 tag, const guint8 *content, gsize len)
{
  guint8 hdr[4] = {tag};
  guint n = 2;

  if (len < 0x80) {
    hdr[1] = (guint8)len;
  } else if (len < 0x100) {
    hdr[1] = 0x81;
    hdr[2] = (guint8)len;
    n = 3;
  } else {
    hdr[1] = 0x82;
    hdr[2] = (guint8)(len >> 8);
    hdr[3] = (guint8)len;
    n = 4;
  }
  g_byte_array_append(out, hdr, n);
  g_byte_array_append(out, content, (guint)len);
}

/* A plain-PKCS#8-shaped key: SEQUENCE { INTEGER 0, SEQUENCE {},
 * OCTET STRING payload }. */
static inline GBytes *
crash_pkcs8_new(guint64 seq)
{
  static const guint8 version[] = {0x00};
  g_autoptr(GBytes) payload = crash_payload_new(seq, 'K');
  GByteArray *inner = g_byte_array_new();
  GByteArray *outer = g_byte_array_new();
  gsize len;
  const guint8 *p = g_bytes_get_data(payload, &len);

  crash_der_append(inner, 0x02, version, 1);
  crash_der_append(inner, 0x30, NULL, 0);
  crash_der_append(inner, 0x04, p, len);
  crash_der_append(outer, 0x30, inner->data, inner->len);
  g_byte_array_unref(inner);
  return g_byte_array_free_to_bytes(outer);
}

static inline gboolean
crash_pkcs8_check(GBytes *pkcs8, guint64 seq)
{
  g_autoptr(GBytes) expected = crash_pkcs8_new(seq);
  gsize len, prefix = g_bytes_get_size(expected) -
                      (9 + (gsize)((seq * 2654435761u) % 4000) + CRASH_DIGEST_LEN);
  const guint8 *p = g_bytes_get_data(pkcs8, &len);

  /* The payload's own checksum, and the DER around it as written. */
  return len == g_bytes_get_size(expected) &&
         memcmp(p, g_bytes_get_data(expected, NULL), prefix) == 0 &&
         crash_payload_check(p + prefix, len - prefix, seq, 'K');
}

/* Fake but well-formed HA1 values derived from @seq. */
static inline void
crash_ha1(guint64 seq, char **sha256, char **md5)
{
  g_autofree char *text = g_strdup_printf("crash-user-%" G_GUINT64_FORMAT, seq);

  *sha256 = g_compute_checksum_for_string(G_CHECKSUM_SHA256, text, -1);
  *md5 = g_compute_checksum_for_string(G_CHECKSUM_MD5, text, -1);
}
