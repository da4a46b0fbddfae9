#define G_LOG_DOMAIN "sipcred-test-sign"

#include <string.h>

#include <glib.h>

#include "identity/cert.h"
#include "identity/sign.h"
#include "testcert.h"

/* Mon, 23 Nov 2026 12:00:00 GMT: the Date of the fixed message, inside the
 * validity of data/kat-cert.der. */
#define KAT_NOW G_GINT64_CONSTANT(1795435200)
#define INFO_URL "https://example.com/cert/example.com.der"
#define WINDOW 600

/* The fixed message. Every header the digest-string covers is there, plus
 * some it does not cover; the body holds a '|' and ends in CRLF. */
#define KAT_HEAD                                                                                  \
  "NOTIFY sip:bob@192.0.2.10:5061;transport=tls SIP/2.0\r\n"                                      \
  "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776asdhds\r\n"                                   \
  "Max-Forwards: 70\r\n"                                                                          \
  "Route: <sip:proxy.example.net;lr>\r\n"                                                         \
  "From: \"Example Credential Server\" <sip:alice@example.com;transport=tls>;tag=1928301774\r\n"  \
  "To: <sip:bob@example.org>;tag=a6c85cf\r\n"                                                     \
  "Call-ID: a84b4c76e66710@pc33.example.org\r\n"                                                  \
  "CSeq: 314159 NOTIFY\r\n"
#define KAT_DATE "Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
#define KAT_TAIL                                                                                  \
  "Contact: <sips:edge.example.com:5061;transport=tls;ob>;expires=3600\r\n"                       \
  "Event: certificate\r\n"                                                                        \
  "Subscription-State: active;expires=3600\r\n"                                                   \
  "Content-Type: text/plain\r\n"                                                                  \
  "Content-Length: 26\r\n"                                                                        \
  "\r\n"                                                                                          \
  "hello, signed world|body\r\n"
#define KAT_MSG KAT_HEAD KAT_DATE KAT_TAIL

/* Written out by hand from RFC 4474 section 9, not by our code. */
#define KAT_DIGEST                                                                                \
  "sip:alice@example.com;transport=tls|sip:bob@example.org|a84b4c76e66710@pc33.example.org|"      \
  "314159 NOTIFY|Mon, 23 Nov 2026 12:00:00 GMT|sips:edge.example.com:5061;transport=tls;ob|"      \
  "hello, signed world|body\r\n"

/* The expected signatures come from OpenSSL's command-line tool, an
 * implementation independent of both backends, run in tests/unit/sign/data:
 *
 *   D='sip:alice@example.com;transport=tls|sip:bob@example.org|a84b4c76e66710@pc33.example.org|314159
 * NOTIFY|Mon, 23 Nov 2026 12:00:00 GMT|sips:edge.example.com:5061;transport=tls;ob|hello, signed
 * world|body\r\n' printf "$D" | openssl dgst -sha256 -sign kat-key.pem | base64 -w0 printf "$D" |
 * openssl dgst -sha1 -sign kat-key.pem | base64 -w0
 *
 * (printf turns the final \r\n into CR LF; the input is 202 bytes.) */
#define KAT_SIG_SHA256                                                                            \
  "beVmBc/+ujH1OTq45sJXxgzYMqztRrgdHVHihxLugTkY7YeYuY8fSkmnazq0zqtOwahhHwW8kL4xMPlAEB5nGQvMUfqd0" \
  "0P5HtZIZNzL03UtTjDf6rNcOPrxQOExkjmTBAomuofIdNZqSTTeR2q35e7QuMxdWhLkFCcWXQFHs2LZzszCGWmDiNVEWj" \
  "CB+4FKhdVlcOckzSSDEL4dBeDltrYwRLkQ7XB64u8TG3r8AYJZdh5MBzSovgZRiEKJM3Nd2nXL/E84EZ6siLC0KOf/P6"  \
  "kK0qCiT79M2qpGAEQZA6A9smFqUBGa+2ICunRQa324I5dvt1CvQVD2At/CfSn4bw=="
#define KAT_SIG_SHA1                                                                              \
  "kO0CkFROVbVnldcCtsWmNr0JJxYdc74PzyVXtVGfoyqq/Pt74jd0q8VPILAmVcf3IpWAX/Qd7r9y8nR8XGE1KGN7q5I6K" \
  "JhtGc4zIo+Dacddpib0ofQeY3SfgVZR2hhcdPFrsIIu0IS/8b69b9WPbaKkEJ0rgCMV8FRo88noc6AG2p6a7PO+NzdBHH" \
  "fxrxypw80WnB6kmojNVENorwBQZlUUyMSmnFK7G69fTaeqgbhPXCBmd0Yw35ryUN9HObbJ1UKrzrAGMekNrNIvdZIckTN" \
  "FBvWK2RwzjCAVYbAd/eoeDjjnXWMJjX3BLmmQAQQOZaOaB7VL5OPY6hoLDXiALw=="

static GBytes *
load(const char *name)
{
  g_autofree char *path = g_test_build_filename(G_TEST_DIST, "unit", "sign", "data", name, NULL);
  g_autoptr(GError) error = NULL;
  char *data;
  gsize len;

  g_file_get_contents(path, &data, &len, &error);
  g_assert_no_error(error);
  return g_bytes_new_take(data, len);
}

static IdentSigner *
signer_from(IdentSignerBackend backend, const char *key_file)
{
  g_autoptr(GBytes) key = load(key_file);
  g_autoptr(GBytes) cert = load("kat-cert.der");
  g_autoptr(GError) error = NULL;
  IdentSigner *signer =
      ident_signer_new(backend, g_bytes_get_data(key, NULL), g_bytes_get_size(key),
                       g_bytes_get_data(cert, NULL), g_bytes_get_size(cert), &error);

  g_assert_no_error(error);
  g_assert_nonnull(signer);
  return signer;
}

static IdentSigner *
kat_signer(IdentSignerBackend backend)
{
  return signer_from(backend, "kat-key.pem");
}

static GBytes *
sign_ok(IdentSigner *signer, IdentAlg alg, const char *msg, gint64 now)
{
  g_autoptr(GError) error = NULL;
  GBytes *out =
      ident_sign_message(signer, alg, INFO_URL, now, (const guint8 *)msg, strlen(msg), &error);
  g_assert_no_error(error);
  g_assert_nonnull(out);
  return out;
}

static char *
bytes_str(GBytes *b)
{
  return g_strndup(g_bytes_get_data(b, NULL), g_bytes_get_size(b));
}

static GBytes *
kat_cert(void)
{
  return load("kat-cert.der");
}

/* Verifies @msg against data/kat-cert.der at @now; returns the error. */
static GError *
verify(const char *msg, gint64 now)
{
  g_autoptr(GBytes) cert = kat_cert();
  GError *error = NULL;
  gboolean ok =
      ident_verify_message((const guint8 *)msg, strlen(msg), g_bytes_get_data(cert, NULL),
                           g_bytes_get_size(cert), now, WINDOW, NULL, &error);
  g_assert_true(ok == (error == NULL));
  return error;
}

static char *
replace_once(const char *s, const char *from, const char *to)
{
  const char *at = strstr(s, from);

  g_assert_nonnull(at);
  return g_strdup_printf("%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
}

static void
assert_digest(const char *msg, const char *expected)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) d = ident_digest_string((const guint8 *)msg, strlen(msg), &error);
  g_autofree char *s = NULL;

  g_assert_no_error(error);
  s = bytes_str(d);
  g_assert_cmpstr(s, ==, expected);
}

static void
assert_digest_error(const char *msg, const char *message_part)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) d = ident_digest_string((const guint8 *)msg, strlen(msg), &error);

  g_assert_null(d);
  g_assert_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE);
  if (strstr(error->message, message_part) == NULL)
    g_error("error \"%s\" does not mention \"%s\"", error->message, message_part);
}

/* ---- digest-string ---- */

static void
test_digest_kat(void)
{
  assert_digest(KAT_MSG, KAT_DIGEST);
}

#define SIMPLE_TAIL "Content-Length: 0\r\n\r\n"

static void
test_digest_compact(void)
{
  /* Compact names and odd letter case read as the full names. */
  assert_digest("NOTIFY sip:b@h SIP/2.0\r\n"
                "f: <sip:alice@example.com>;tag=1\r\n"
                "t: sip:bob@example.org\r\n"
                "i: abc@h\r\n"
                "cseq: 7 NOTIFY\r\n"
                "DATE: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
                "m: <sip:edge@192.0.2.1>\r\n"
                "l: 3\r\n"
                "\r\nxyz",
                "sip:alice@example.com|sip:bob@example.org|abc@h|7 NOTIFY|"
                "Mon, 23 Nov 2026 12:00:00 GMT|sip:edge@192.0.2.1|xyz");
}

static void
test_digest_display_names(void)
{
  /* A quoted display name holding '<', '>', ',' and an escaped quote; a
   * token display name; an addr-spec without <> whose ';' starts header
   * parameters; URI parameters and headers inside <> are kept. */
  assert_digest("NOTIFY sip:b@h SIP/2.0\r\n"
                "From: \"A <x> \\\"q\\\", b\" <sip:alice@example.com;user=phone?X=y>;tag=1\r\n"
                "To: Bob Smith <sip:bob@example.org;maddr=192.0.2.7>\r\n"
                "Call-ID: abc\r\n"
                "CSeq:   9    MESSAGE  \r\n"
                "Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
                "Contact: sip:edge@192.0.2.1;expires=60, <sip:other@192.0.2.2>\r\n"
                "Contact: <sip:third@192.0.2.3>\r\n" SIMPLE_TAIL,
                "sip:alice@example.com;user=phone?X=y|sip:bob@example.org;maddr=192.0.2.7|abc|"
                "9 MESSAGE|Mon, 23 Nov 2026 12:00:00 GMT|sip:edge@192.0.2.1|");
  /* The first of several Contact values in one header, written with <>. */
  assert_digest("NOTIFY sip:b@h SIP/2.0\r\n"
                "From: sip:alice@example.com ;tag=1\r\n"
                "To: <sip:bob@example.org>\r\n"
                "Call-ID: abc\r\n"
                "CSeq: 9 NOTIFY\r\n"
                "Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
                "Contact: \"Edge, the\" <sip:edge@192.0.2.1>;q=1, <sip:other@192.0.2.2>\r\n"
                "Content-Length: 0\r\n\r\n",
                "sip:alice@example.com|sip:bob@example.org|abc|9 NOTIFY|"
                "Mon, 23 Nov 2026 12:00:00 GMT|sip:edge@192.0.2.1|");
}

static void
test_digest_no_contact_empty_body(void)
{
  /* No Contact: an empty field; an empty body: nothing after the last '|'.
   * A folded header value unfolds to one space. */
  assert_digest("NOTIFY sip:b@h SIP/2.0\r\n"
                "From: <sip:alice@example.com>\r\n"
                "To: <sip:bob@example.org>\r\n"
                "Call-ID: abc\r\n"
                "CSeq: 9\r\n  NOTIFY\r\n"
                "Date: Mon, 23 Nov 2026\r\n 12:00:00 GMT\r\n" SIMPLE_TAIL,
                "sip:alice@example.com|sip:bob@example.org|abc|9 NOTIFY|"
                "Mon, 23 Nov 2026 12:00:00 GMT||");
}

#define ERR_HEAD                                                                                  \
  "NOTIFY sip:b@h SIP/2.0\r\n"                                                                    \
  "To: <sip:bob@example.org>\r\n"                                                                 \
  "Call-ID: abc\r\n"                                                                              \
  "CSeq: 9 NOTIFY\r\n"                                                                            \
  "Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n"

static void
test_digest_errors(void)
{
  /* Over a stream, no Content-Length means no end of the body. */
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\n\r\n", "no Content-Length");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\nContent-Length: 5\r\n\r\nabc",
                      "Content-Length says 5");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\nContent-Length: 1\r\n\r\nabc",
                      "Content-Length says 1");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\nContent-Length: x\r\n\r\n",
                      "not a number");
  assert_digest_error(ERR_HEAD
                      "From: <sip:a@example.com>\r\nf: <sip:b@example.com>\r\n" SIMPLE_TAIL,
                      "more than one From");
  assert_digest_error(ERR_HEAD SIMPLE_TAIL, "no From");
  assert_digest_error(ERR_HEAD "From: \"Alice <sip:a@example.com>\r\n" SIMPLE_TAIL,
                      "unterminated quoted");
  assert_digest_error(ERR_HEAD "From: Alice <sip:a@example.com\r\n" SIMPLE_TAIL, "no closing >");
  assert_digest_error(ERR_HEAD "From: <>\r\n" SIMPLE_TAIL, "empty URI");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\nContact: *\r\n" SIMPLE_TAIL,
                      "Contact: *");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\nContent-Length: 0\r\n\r\n",
                      "stray CR, LF or NUL");
  assert_digest_error(ERR_HEAD "From: <sip:a@example.com>\r\nContent-Length: 0\r\n",
                      "does not end with an empty line");
  assert_digest_error("NOTIFY sip:b@h SIP/2.0\r\n"
                      "From: <sip:a@example.com>\r\n"
                      "To: <sip:bob@example.org>\r\n"
                      "Call-ID: abc\r\n"
                      "CSeq: NOTIFY 9\r\n"
                      "Date: Mon, 23 Nov 2026 12:00:00 GMT\r\n" SIMPLE_TAIL,
                      "CSeq");
  assert_digest_error("NOTIFY sip:b@h SIP/2.0\r\n"
                      "From: <sip:a@example.com>\r\n"
                      "To: <sip:bob@example.org>\r\n"
                      "Call-ID: abc\r\n"
                      "CSeq: 9 NOTIFY\r\n" SIMPLE_TAIL,
                      "no Date");
}

/* ---- Date ---- */

static void
test_date_format(void)
{
  static const struct {
    gint64 t;
    const char *s;
  } cases[] = {
      {0, "Thu, 01 Jan 1970 00:00:00 GMT"},
      {951782400, "Tue, 29 Feb 2000 00:00:00 GMT"},
      {KAT_NOW, "Mon, 23 Nov 2026 12:00:00 GMT"},
      {KAT_NOW + 86400 * 39 + 3661, "Fri, 01 Jan 2027 13:01:01 GMT"},
  };

  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *s = ident_date_format(cases[i].t);
    gint64 back = -1;
    g_assert_cmpstr(s, ==, cases[i].s);
    g_assert_true(ident_date_parse(s, &back));
    g_assert_cmpint(back, ==, cases[i].t);
  }
}

static void
test_date_parse_strict(void)
{
  static const char *const bad[] = {
      "Mon, 23 Nov 2026 12:00:00 UTC",  "Tue, 23 Nov 2026 12:00:00 GMT", /* wrong weekday */
      "Mon, 3 Nov 2026 12:00:00 GMT",   "Mon, 23 nov 2026 12:00:00 GMT",
      "Mon,  23 Nov 2026 12:00:00 GMT", "Mon, 23 Nov 2026 12:00 GMT",
      "Mon, 23 Nov 2026 24:00:00 GMT",  "Tue, 31 Feb 2026 12:00:00 GMT",
      "Monday, 23-Nov-26 12:00:00 GMT", "",
  };
  gint64 t;

  for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
    g_assert_false(ident_date_parse(bad[i], &t));
}

/* ---- signer and known answers ---- */

static void
test_kat_raw(gconstpointer data)
{
  IdentSignerBackend backend = GPOINTER_TO_INT(data);
  g_autoptr(IdentSigner) signer = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) s256 = NULL, s1 = NULL;
  g_autofree char *b256 = NULL, *b1 = NULL;

  if (!ident_signer_backend_available(backend)) {
    g_test_skip("backend not built");
    return;
  }
  signer = kat_signer(backend);
  s256 = ident_signer_sign(signer, IDENT_ALG_RSA_SHA256, (const guint8 *)KAT_DIGEST,
                           strlen(KAT_DIGEST), &error);
  g_assert_no_error(error);
  s1 = ident_signer_sign(signer, IDENT_ALG_RSA_SHA1, (const guint8 *)KAT_DIGEST,
                         strlen(KAT_DIGEST), &error);
  g_assert_no_error(error);
  b256 = g_base64_encode(g_bytes_get_data(s256, NULL), g_bytes_get_size(s256));
  b1 = g_base64_encode(g_bytes_get_data(s1, NULL), g_bytes_get_size(s1));
  g_assert_cmpstr(b256, ==, KAT_SIG_SHA256);
  g_assert_cmpstr(b1, ==, KAT_SIG_SHA1);
}

static void
test_kat_message(gconstpointer data)
{
  IdentSignerBackend backend = GPOINTER_TO_INT(data);
  g_autoptr(IdentSigner) signer = NULL;
  g_autoptr(GBytes) out256 = NULL, out1 = NULL;
  g_autofree char *s256 = NULL, *s1 = NULL;

  if (!ident_signer_backend_available(backend)) {
    g_test_skip("backend not built");
    return;
  }
  signer = kat_signer(backend);
  /* The Date is there already: only the two Identity headers are added, at
   * the end of the header section; the rest is byte for byte the same. */
  out256 = sign_ok(signer, IDENT_ALG_RSA_SHA256, KAT_MSG, KAT_NOW + 5);
  s256 = bytes_str(out256);
  g_assert_cmpstr(s256, ==,
                  KAT_HEAD KAT_DATE
                  "Contact: <sips:edge.example.com:5061;transport=tls;ob>;expires=3600\r\n"
                  "Event: certificate\r\n"
                  "Subscription-State: active;expires=3600\r\n"
                  "Content-Type: text/plain\r\n"
                  "Content-Length: 26\r\n"
                  "Identity: \"" KAT_SIG_SHA256 "\"\r\n"
                  "Identity-Info: <" INFO_URL ">;alg=rsa-sha256\r\n"
                  "\r\n"
                  "hello, signed world|body\r\n");
  out1 = sign_ok(signer, IDENT_ALG_RSA_SHA1, KAT_MSG, KAT_NOW + 5);
  s1 = bytes_str(out1);
  g_assert_nonnull(strstr(s1, "\r\nIdentity: \"" KAT_SIG_SHA1 "\"\r\n"
                              "Identity-Info: <" INFO_URL ">;alg=rsa-sha1\r\n\r\n"));
}

static void
test_backends_identical(void)
{
  g_autoptr(IdentSigner) g = NULL, o = NULL;
  const char *msgs[] = {
      KAT_MSG, KAT_HEAD KAT_TAIL, /* Date added */
  };

  if (!ident_signer_backend_available(IDENT_SIGNER_OPENSSL)) {
    g_test_skip("OpenSSL backend not built");
    return;
  }
  g = kat_signer(IDENT_SIGNER_GNUTLS);
  o = kat_signer(IDENT_SIGNER_OPENSSL);
  g_assert_cmpint(ident_signer_get_backend(o), ==, IDENT_SIGNER_OPENSSL);
  for (guint i = 0; i < G_N_ELEMENTS(msgs); i++) {
    for (IdentAlg alg = IDENT_ALG_RSA_SHA256; alg <= IDENT_ALG_RSA_SHA1; alg++) {
      g_autoptr(GBytes) a = sign_ok(g, alg, msgs[i], KAT_NOW);
      g_autoptr(GBytes) b = sign_ok(o, alg, msgs[i], KAT_NOW);
      g_assert_true(g_bytes_equal(a, b));
    }
  }
}

static void
test_backend_missing(void)
{
  g_autoptr(GBytes) key = load("kat-key.pem");
  g_autoptr(GBytes) cert = kat_cert();
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentSigner) s = NULL;

  if (ident_signer_backend_available(IDENT_SIGNER_OPENSSL)) {
    g_test_skip("OpenSSL backend is built");
    return;
  }
  s = ident_signer_new(IDENT_SIGNER_OPENSSL, g_bytes_get_data(key, NULL), g_bytes_get_size(key),
                       g_bytes_get_data(cert, NULL), g_bytes_get_size(cert), &error);
  g_assert_null(s);
  g_assert_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_BACKEND);
  g_assert_nonnull(strstr(error->message, "openssl"));
}

static void
test_signer_key_forms(void)
{
  /* PKCS#1 PEM and PKCS#8 DER give the same key, so the same signature. */
  static const char *const files[] = {"kat-key-pkcs1.pem", "kat-key.der"};

  for (IdentSignerBackend b = IDENT_SIGNER_GNUTLS; b <= IDENT_SIGNER_OPENSSL; b++) {
    if (!ident_signer_backend_available(b))
      continue;
    for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
      g_autoptr(IdentSigner) signer = signer_from(b, files[i]);
      g_autoptr(GBytes) out = sign_ok(signer, IDENT_ALG_RSA_SHA256, KAT_MSG, KAT_NOW);
      g_autofree char *s = bytes_str(out);
      g_assert_nonnull(strstr(s, KAT_SIG_SHA256));
    }
  }
}

static void
assert_signer_error(const guint8 *key, gsize key_len, const guint8 *cert, gsize cert_len,
                    const char *message_part)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentSigner) s =
      ident_signer_new(IDENT_SIGNER_GNUTLS, key, key_len, cert, cert_len, &error);

  g_assert_null(s);
  g_assert_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_KEY);
  if (strstr(error->message, message_part) == NULL)
    g_error("error \"%s\" does not mention \"%s\"", error->message, message_part);
}

static void
test_signer_refuses(void)
{
  g_autoptr(GBytes) key = load("kat-key.pem");
  g_autoptr(GBytes) enc = load("kat-key-encrypted.pem");
  g_autoptr(GBytes) cert = kat_cert();
  g_autoptr(GBytes) other_pkcs8 = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(IdentCert) other = NULL;
  g_autoptr(TestCert) ec = test_cert_new(&(TestCertSpec){.cn = "example.com"});
  g_autofree char *ec_key = test_cert_get_key_pem(ec);
  GBytes *other_der;

  /* Another RSA key's certificate. */
  other = ident_cert_generate("sip:x@example.com", 2048, 30, KAT_NOW, &other_pkcs8, &error);
  g_assert_no_error(error);
  other_der = ident_cert_get_der(other);
  assert_signer_error(g_bytes_get_data(key, NULL), g_bytes_get_size(key),
                      g_bytes_get_data(other_der, NULL), g_bytes_get_size(other_der),
                      "does not belong");
  assert_signer_error(g_bytes_get_data(enc, NULL), g_bytes_get_size(enc),
                      g_bytes_get_data(cert, NULL), g_bytes_get_size(cert), "encrypted");
  assert_signer_error((const guint8 *)ec_key, strlen(ec_key), NULL, 0, "certificate");
  assert_signer_error((const guint8 *)ec_key, strlen(ec_key), g_bytes_get_data(ec->der, NULL),
                      g_bytes_get_size(ec->der), "RSA");
}

/* ---- message signing ---- */

static void
test_message_date_added(void)
{
  g_autoptr(IdentSigner) signer = kat_signer(IDENT_SIGNER_GNUTLS);
  g_autoptr(GBytes) out = sign_ok(signer, IDENT_ALG_RSA_SHA256, KAT_HEAD KAT_TAIL, KAT_NOW);
  g_autofree char *s = bytes_str(out);
  g_autoptr(GError) error = NULL;

  /* Date from the given time goes in just before Identity, and the result
   * is the fixed message with its Date moved: the same signature. */
  g_assert_nonnull(
      strstr(s, "Content-Length: 26\r\n" KAT_DATE "Identity: \"" KAT_SIG_SHA256 "\"\r\n"));
  g_assert_true(g_str_has_prefix(s, KAT_HEAD "Contact: "));
  g_assert_true(g_str_has_suffix(s, "\r\n\r\nhello, signed world|body\r\n"));
  error = verify(s, KAT_NOW);
  g_assert_no_error(error);
}

static void
test_message_date_kept(void)
{
  g_autoptr(IdentSigner) signer = kat_signer(IDENT_SIGNER_GNUTLS);
  /* A day later than the Date: it must not be replaced. */
  g_autoptr(GBytes) out = sign_ok(signer, IDENT_ALG_RSA_SHA256, KAT_MSG, KAT_NOW + 86400);
  g_autofree char *s = bytes_str(out);
  const char *first = strstr(s, "Date: ");

  g_assert_nonnull(first);
  g_assert_true(g_str_has_prefix(first, KAT_DATE));
  g_assert_null(strstr(first + 1, "Date: "));
}

static void
test_message_refused(void)
{
  g_autoptr(IdentSigner) signer = kat_signer(IDENT_SIGNER_GNUTLS);
  g_autoptr(GBytes) out = sign_ok(signer, IDENT_ALG_RSA_SHA256, KAT_MSG, KAT_NOW);
  g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL;
  g_autoptr(GBytes) again = NULL, nocl = NULL, badurl = NULL;
  g_autofree char *no_cl = replace_once(KAT_MSG, "Content-Length: 26\r\n", "");

  /* Signing twice would leave two Identity headers. */
  again = ident_sign_message(signer, IDENT_ALG_RSA_SHA256, INFO_URL, KAT_NOW,
                             g_bytes_get_data(out, NULL), g_bytes_get_size(out), &e1);
  g_assert_null(again);
  g_assert_error(e1, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE);
  nocl = ident_sign_message(signer, IDENT_ALG_RSA_SHA256, INFO_URL, KAT_NOW, (const guint8 *)no_cl,
                            strlen(no_cl), &e2);
  g_assert_null(nocl);
  g_assert_error(e2, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE);
  badurl = ident_sign_message(signer, IDENT_ALG_RSA_SHA256, "https://x/a>;alg=rsa-sha1", KAT_NOW,
                              (const guint8 *)KAT_MSG, strlen(KAT_MSG), &e3);
  g_assert_null(badurl);
  g_assert_error(e3, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_MESSAGE);
}

/* ---- verification ---- */

static char *
signed_kat(IdentAlg alg, const char *msg)
{
  g_autoptr(IdentSigner) signer = kat_signer(IDENT_SIGNER_GNUTLS);
  g_autoptr(GBytes) out = sign_ok(signer, alg, msg, KAT_NOW);
  return bytes_str(out);
}

static void
test_verify_ok(void)
{
  for (IdentAlg alg = IDENT_ALG_RSA_SHA256; alg <= IDENT_ALG_RSA_SHA1; alg++) {
    g_autofree char *s = signed_kat(alg, KAT_MSG);
    g_autoptr(GBytes) cert = kat_cert();
    g_autoptr(GError) error = NULL;
    IdentAlg got = 99;

    g_assert_true(ident_verify_message((const guint8 *)s, strlen(s), g_bytes_get_data(cert, NULL),
                                       g_bytes_get_size(cert), KAT_NOW, WINDOW, &got, &error));
    g_assert_no_error(error);
    g_assert_cmpint(got, ==, alg);
  }
}

static void
test_verify_tamper(void)
{
  /* Each covered field changed: the signature no longer matches. */
  static const char *const covered[][2] = {
      {"<sip:alice@example.com;transport=tls>", "<sip:mallory@example.com;transport=tls>"},
      {"<sip:bob@example.org>", "<sip:bob@example.net>"},
      {"Call-ID: a84b4c76e66710@", "Call-ID: a84b4c76e66711@"},
      {"CSeq: 314159 NOTIFY", "CSeq: 314160 NOTIFY"},
      {"CSeq: 314159 NOTIFY", "CSeq: 314159 MESSAGE"},
      {"12:00:00 GMT", "12:00:01 GMT"},
      {"<sips:edge.example.com:5061;", "<sips:evil.example.com:5061;"},
      {"hello, signed", "hello, signeD"},
  };
  /* Fields outside the digest-string may change on the way. */
  static const char *const uncovered[][2] = {
      {"branch=z9hG4bK776asdhds", "branch=z9hG4bKother"},
      {"Max-Forwards: 70", "Max-Forwards: 69"},
      {"Route: <sip:proxy.example.net;lr>\r\n", ""},
      {"Via: ", "Via: SIP/2.0/TLS 198.51.100.9;branch=z9hG4bKx\r\nVia: "},
      {";tag=1928301774", ";tag=other"}, /* a header parameter of From */
      {"Event: certificate", "Event: certificate;id=1"},
  };

  for (IdentAlg alg = IDENT_ALG_RSA_SHA256; alg <= IDENT_ALG_RSA_SHA1; alg++) {
    g_autofree char *s = signed_kat(alg, KAT_MSG);

    for (guint i = 0; i < G_N_ELEMENTS(covered); i++) {
      g_autofree char *t = replace_once(s, covered[i][0], covered[i][1]);
      g_autoptr(GError) error = verify(t, KAT_NOW);
      g_assert_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE);
    }
    for (guint i = 0; i < G_N_ELEMENTS(uncovered); i++) {
      g_autofree char *t = replace_once(s, uncovered[i][0], uncovered[i][1]);
      g_autoptr(GError) error = verify(t, KAT_NOW);
      g_assert_no_error(error);
    }
  }
}

static void
test_verify_date_window(void)
{
  g_autofree char *s = signed_kat(IDENT_ALG_RSA_SHA256, KAT_MSG);
  g_autoptr(GError) ok1 = verify(s, KAT_NOW + WINDOW);
  g_autoptr(GError) ok2 = verify(s, KAT_NOW - WINDOW);
  g_autoptr(GError) late = verify(s, KAT_NOW + WINDOW + 1);
  g_autoptr(GError) early = verify(s, KAT_NOW - WINDOW - 1);

  g_assert_no_error(ok1);
  g_assert_no_error(ok2);
  g_assert_error(late, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE);
  g_assert_error(early, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE);
  g_assert_nonnull(strstr(late->message, "601 s before now"));
}

static void
test_verify_date_form(void)
{
  /* Signed with a Date that is not RFC 1123: the signature holds, the
   * Date check does not. */
  g_autofree char *msg =
      replace_once(KAT_MSG, "Mon, 23 Nov 2026 12:00:00 GMT", "Mon, 23 Nov 2026 12:00:00 UTC");
  g_autofree char *s = signed_kat(IDENT_ALG_RSA_SHA256, msg);
  g_autoptr(GError) error = verify(s, KAT_NOW);

  g_assert_error(error, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE);
  g_assert_nonnull(strstr(error->message, "RFC 1123"));
}

static void
test_verify_cert_names(void)
{
  g_autofree char *other_host = replace_once(KAT_MSG, "<sip:alice@example.com;transport=tls>",
                                             "<sip:alice@example.org;transport=tls>");
  g_autofree char *sub_host = replace_once(KAT_MSG, "<sip:alice@example.com;transport=tls>",
                                           "<sip:alice@SIP.Example.COM:5061>");
  g_autofree char *tel =
      replace_once(KAT_MSG, "<sip:alice@example.com;transport=tls>", "<tel:+15551234567>");
  g_autofree char *s_other = signed_kat(IDENT_ALG_RSA_SHA256, other_host);
  g_autofree char *s_sub = signed_kat(IDENT_ALG_RSA_SHA256, sub_host);
  g_autofree char *s_tel = signed_kat(IDENT_ALG_RSA_SHA256, tel);
  g_autofree char *s_kat = signed_kat(IDENT_ALG_RSA_SHA256, KAT_MSG);
  g_autoptr(GError) e_other = verify(s_other, KAT_NOW);
  g_autoptr(GError) e_sub = verify(s_sub, KAT_NOW);
  g_autoptr(GError) e_tel = verify(s_tel, KAT_NOW);
  g_autoptr(GError) e_expired = verify(s_kat, KAT_NOW + 86400 * 366 * 25);
  g_autoptr(GBytes) cn_only = load("kat-cert-cn-only.der");
  g_autoptr(GError) e_cn = NULL, e_cn_other = NULL;

  g_assert_error(e_other, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE);
  g_assert_nonnull(strstr(e_other->message, "example.org"));
  g_assert_no_error(e_sub); /* second dNSName, case-insensitive, port ignored */
  g_assert_error(e_tel, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE);
  /* 25 years on the Date is stale too; move it along to reach the check. */
  {
    g_autofree char *later_date = ident_date_format(KAT_NOW + 86400 * 366 * 25);
    g_autofree char *hdr = g_strdup_printf("Date: %s\r\n", later_date);
    g_autofree char *later = replace_once(KAT_MSG, KAT_DATE, hdr);
    g_autofree char *s_later = signed_kat(IDENT_ALG_RSA_SHA256, later);
    g_autoptr(GError) e = verify(s_later, KAT_NOW + 86400 * 366 * 25);
    g_assert_error(e, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE);
    g_assert_nonnull(strstr(e->message, "not valid"));
  }
  g_assert_error(e_expired, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_DATE);

  /* Without subjectAltName the CN counts. */
  g_assert_true(ident_verify_message((const guint8 *)s_kat, strlen(s_kat),
                                     g_bytes_get_data(cn_only, NULL), g_bytes_get_size(cn_only),
                                     KAT_NOW, WINDOW, NULL, &e_cn));
  g_assert_no_error(e_cn);
  g_assert_false(ident_verify_message((const guint8 *)s_sub, strlen(s_sub),
                                      g_bytes_get_data(cn_only, NULL), g_bytes_get_size(cn_only),
                                      KAT_NOW, WINDOW, NULL, &e_cn_other));
  g_assert_error(e_cn_other, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_CERTIFICATE);
}

static void
test_verify_algorithm(void)
{
  g_autofree char *s1 = signed_kat(IDENT_ALG_RSA_SHA1, KAT_MSG);
  g_autofree char *s256 = signed_kat(IDENT_ALG_RSA_SHA256, KAT_MSG);
  /* Without alg, RFC 4474 means rsa-sha1. */
  g_autofree char *no_alg = replace_once(s1, ";alg=rsa-sha1", "");
  g_autofree char *claims_sha1 = replace_once(s256, "alg=rsa-sha256", "alg=rsa-sha1");
  g_autofree char *md5 = replace_once(s256, "alg=rsa-sha256", "alg=rsa-md5");
  g_autofree char *no_info = replace_once(s256, "Identity-Info:", "X-Identity-Info:");
  g_autofree char *no_ident = replace_once(s256, "Identity: \"", "X-Identity: \"");
  g_autofree char *not_b64 = replace_once(s256, "Identity: \"", "Identity: \"!");
  g_autofree char *compact = replace_once(s256, "Identity: \"", "y: \"");
  g_autoptr(GError) e_no_alg = verify(no_alg, KAT_NOW);
  g_autoptr(GError) e_claims = verify(claims_sha1, KAT_NOW);
  g_autoptr(GError) e_md5 = verify(md5, KAT_NOW);
  g_autoptr(GError) e_no_info = verify(no_info, KAT_NOW);
  g_autoptr(GError) e_no_ident = verify(no_ident, KAT_NOW);
  g_autoptr(GError) e_b64 = verify(not_b64, KAT_NOW);
  g_autoptr(GError) e_compact = verify(compact, KAT_NOW);

  g_assert_no_error(e_no_alg);
  g_assert_error(e_claims, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE);
  g_assert_error(e_md5, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM);
  g_assert_nonnull(strstr(e_md5->message, "rsa-md5"));
  g_assert_error(e_no_info, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_ALGORITHM);
  g_assert_error(e_no_ident, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE);
  g_assert_nonnull(strstr(e_no_ident->message, "no Identity"));
  g_assert_error(e_b64, IDENT_SIGN_ERROR, IDENT_SIGN_ERROR_SIGNATURE);
  g_assert_no_error(e_compact);
}

/* ---- pool ---- */

#define POOL_KEYS 6
#define POOL_PER_KEY 40

typedef struct {
  guint delivered[POOL_KEYS + 1];
  guint next[POOL_KEYS + 1]; /* the sequence number expected next, per key */
  guint errors;
  guint destroyed;
  guint total;
  IdentSignPool *pool;
  guint64 cancel_key; /* a callback for this key cancels it */
} PoolState;

typedef struct {
  PoolState *st;
  guint key;
  guint seq;
} PoolItem;

static void
pool_item_free(gpointer data)
{
  PoolItem *it = data;
  it->st->destroyed++;
  g_free(it);
}

static void
pool_done(GBytes *signed_msg, const GError *error, void *user_data)
{
  PoolItem *it = user_data;
  PoolState *st = it->st;

  st->total++;
  st->delivered[it->key]++;
  /* Per key, strictly in submission order. */
  g_assert_cmpuint(it->seq, ==, st->next[it->key]);
  st->next[it->key]++;
  if (error != NULL) {
    st->errors++;
  } else {
    g_autofree char *s = bytes_str(signed_msg);
    g_autofree char *tag = g_strdup_printf("key=%u seq=%u\r\n", it->key, it->seq);
    g_assert_true(g_str_has_suffix(s, tag));
    g_assert_nonnull(strstr(s, "\r\nIdentity: \""));
  }
  if (it->key == st->cancel_key)
    ident_sign_pool_cancel(st->pool, it->key);
}

static GBytes *
pool_message(guint key, guint seq)
{
  g_autofree char *tag = g_strdup_printf("key=%u seq=%u\r\n", key, seq);
  /* Every fifth message has a large body, so that threads finish out of
   * submission order. */
  gsize pad = seq % 5 == 0 ? 256 * 1024 : 0;
  g_autofree char *body = g_strnfill(pad, 'x');
  g_autofree char *full = g_strconcat(body, tag, NULL);
  GString *s = g_string_new(KAT_HEAD KAT_DATE);

  g_string_append_printf(s, "Content-Length: %zu\r\n\r\n%s", strlen(full), full);
  return g_string_free_to_bytes(s);
}

static gboolean
flag_timeout(gpointer data)
{
  *(gboolean *)data = TRUE;
  return G_SOURCE_REMOVE;
}

/* Runs @ctx until @st has @want deliveries; a stuck pool fails after a
 * minute rather than hanging the suite. */
static void
run_until(GMainContext *ctx, PoolState *st, guint want)
{
  gboolean expired = FALSE;
  GSource *t = g_timeout_source_new_seconds(60);

  g_source_set_callback(t, flag_timeout, &expired, NULL);
  g_source_attach(t, ctx);
  while (st->total < want && !expired)
    g_main_context_iteration(ctx, TRUE);
  g_source_destroy(t);
  g_source_unref(t);
  g_assert_false(expired);
}

static void
test_pool_order(gconstpointer data)
{
  IdentSignerBackend backend = GPOINTER_TO_INT(data);
  g_autoptr(GMainContext) ctx = g_main_context_new();
  g_autoptr(IdentSigner) signer = NULL;
  g_autoptr(GError) error = NULL;
  PoolState st = {0};
  guint n = 0;

  if (!ident_signer_backend_available(backend)) {
    g_test_skip("backend not built");
    return;
  }
  signer = kat_signer(backend);
  g_main_context_push_thread_default(ctx);
  st.pool = ident_sign_pool_new(4, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(ident_sign_pool_get_threads(st.pool), ==, 4);

  /* Interleaved over the keys, as a fan-out would. */
  for (guint seq = 0; seq < POOL_PER_KEY; seq++) {
    for (guint key = 1; key <= POOL_KEYS; key++) {
      g_autoptr(GBytes) msg = pool_message(key, seq);
      PoolItem *it = g_new0(PoolItem, 1);
      it->st = &st;
      it->key = key;
      it->seq = seq;
      /* One message that cannot be signed: its error keeps its place too. */
      if (key == 2 && seq == 7) {
        g_autofree char *bad = g_strdup("NOTIFY sip:x SIP/2.0\r\n\r\n");
        g_bytes_unref(msg);
        msg = g_bytes_new(bad, strlen(bad));
      }
      ident_sign_pool_submit(st.pool, key, signer, IDENT_ALG_RSA_SHA256, INFO_URL, KAT_NOW, msg,
                             pool_done, it, pool_item_free);
      n++;
    }
  }
  /* Nothing is delivered before the context runs. */
  g_assert_cmpuint(ident_sign_pool_get_pending(st.pool), ==, n);
  g_assert_cmpuint(ident_sign_pool_get_pending_for(st.pool, 3), ==, POOL_PER_KEY);
  run_until(ctx, &st, n);
  for (guint key = 1; key <= POOL_KEYS; key++)
    g_assert_cmpuint(st.delivered[key], ==, POOL_PER_KEY);
  g_assert_cmpuint(st.errors, ==, 1);
  g_assert_cmpuint(st.destroyed, ==, n);
  g_assert_cmpuint(ident_sign_pool_get_pending(st.pool), ==, 0);
  g_assert_cmpuint(ident_sign_pool_get_pending_for(st.pool, 3), ==, 0);
  ident_sign_pool_free(st.pool);
  g_main_context_pop_thread_default(ctx);
}

static void
submit_n(PoolState *st, IdentSigner *signer, guint key, guint count)
{
  for (guint seq = 0; seq < count; seq++) {
    g_autoptr(GBytes) msg = pool_message(key, seq);
    PoolItem *it = g_new0(PoolItem, 1);
    it->st = st;
    it->key = key;
    it->seq = seq;
    ident_sign_pool_submit(st->pool, key, signer, IDENT_ALG_RSA_SHA256, INFO_URL, KAT_NOW, msg,
                           pool_done, it, pool_item_free);
  }
}

static void
test_pool_cancel(void)
{
  g_autoptr(GMainContext) ctx = g_main_context_new();
  g_autoptr(IdentSigner) signer = kat_signer(IDENT_SIGNER_GNUTLS);
  g_autoptr(GError) error = NULL;
  PoolState st = {0};

  g_main_context_push_thread_default(ctx);
  st.pool = ident_sign_pool_new(3, &error);
  g_assert_no_error(error);

  submit_n(&st, signer, 1, 20);
  submit_n(&st, signer, 2, 20);
  /* The flow of key 1 died: none of its jobs is delivered, even those the
   * threads are signing now; their user data is released at once. */
  g_assert_cmpuint(ident_sign_pool_cancel(st.pool, 1), ==, 20);
  g_assert_cmpuint(st.destroyed, ==, 20);
  g_assert_cmpuint(ident_sign_pool_get_pending(st.pool), ==, 20);
  g_assert_cmpuint(ident_sign_pool_cancel(st.pool, 1), ==, 0);

  /* A callback may cancel its own key: the jobs behind it are dropped. */
  st.cancel_key = 3;
  submit_n(&st, signer, 3, 10);
  run_until(ctx, &st, 21);
  g_assert_cmpuint(st.delivered[1], ==, 0);
  g_assert_cmpuint(st.delivered[2], ==, 20);
  g_assert_cmpuint(st.delivered[3], ==, 1);
  g_assert_cmpuint(st.destroyed, ==, 50);
  g_assert_cmpuint(ident_sign_pool_get_pending(st.pool), ==, 0);

  /* Freeing the pool with jobs pending drops them the same way; deliveries
   * already scheduled find nothing. */
  submit_n(&st, signer, 4, 12);
  ident_sign_pool_free(st.pool);
  g_assert_cmpuint(st.destroyed, ==, 62);
  for (guint i = 0; i < 100 && g_main_context_iteration(ctx, FALSE); i++)
    ;
  g_assert_cmpuint(st.delivered[4], ==, 0);
  g_main_context_pop_thread_default(ctx);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/sign/digest/known-answer", test_digest_kat);
  g_test_add_func("/sign/digest/compact-forms", test_digest_compact);
  g_test_add_func("/sign/digest/display-names-params", test_digest_display_names);
  g_test_add_func("/sign/digest/no-contact-empty-body", test_digest_no_contact_empty_body);
  g_test_add_func("/sign/digest/errors", test_digest_errors);
  g_test_add_func("/sign/date/format", test_date_format);
  g_test_add_func("/sign/date/parse-strict", test_date_parse_strict);
  g_test_add_data_func("/sign/kat/gnutls/raw", GINT_TO_POINTER(IDENT_SIGNER_GNUTLS), test_kat_raw);
  g_test_add_data_func("/sign/kat/openssl/raw", GINT_TO_POINTER(IDENT_SIGNER_OPENSSL),
                       test_kat_raw);
  g_test_add_data_func("/sign/kat/gnutls/message", GINT_TO_POINTER(IDENT_SIGNER_GNUTLS),
                       test_kat_message);
  g_test_add_data_func("/sign/kat/openssl/message", GINT_TO_POINTER(IDENT_SIGNER_OPENSSL),
                       test_kat_message);
  g_test_add_func("/sign/signer/backends-identical", test_backends_identical);
  g_test_add_func("/sign/signer/openssl-not-built", test_backend_missing);
  g_test_add_func("/sign/signer/key-forms", test_signer_key_forms);
  g_test_add_func("/sign/signer/refuses", test_signer_refuses);
  g_test_add_func("/sign/message/date-added", test_message_date_added);
  g_test_add_func("/sign/message/date-kept", test_message_date_kept);
  g_test_add_func("/sign/message/refused", test_message_refused);
  g_test_add_func("/sign/verify/ok", test_verify_ok);
  g_test_add_func("/sign/verify/tamper", test_verify_tamper);
  g_test_add_func("/sign/verify/date-window", test_verify_date_window);
  g_test_add_func("/sign/verify/date-form", test_verify_date_form);
  g_test_add_func("/sign/verify/cert-names", test_verify_cert_names);
  g_test_add_func("/sign/verify/algorithm", test_verify_algorithm);
  g_test_add_data_func("/sign/pool/order/gnutls", GINT_TO_POINTER(IDENT_SIGNER_GNUTLS),
                       test_pool_order);
  g_test_add_data_func("/sign/pool/order/openssl", GINT_TO_POINTER(IDENT_SIGNER_OPENSSL),
                       test_pool_order);
  g_test_add_func("/sign/pool/cancel", test_pool_cancel);
  return g_test_run();
}
