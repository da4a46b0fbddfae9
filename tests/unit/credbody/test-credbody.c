/* Unit tests of core/credbody: PUBLISH body parsing and credential NOTIFY
 * body building. */
#define G_LOG_DOMAIN "sipcred-test"

#include <string.h>

#include "core/credbody.h"

/* SEQUENCE { OCTET STRING payload } with DER lengths. */
static GByteArray *
der_wrap(guint8 tag, const guint8 *content, gsize len)
{
  GByteArray *a = g_byte_array_new();
  guint8 hdr[6];
  gsize n = 0;
  hdr[n++] = tag;
  if (len < 0x80) {
    hdr[n++] = (guint8)len;
  } else if (len < 0x100) {
    hdr[n++] = 0x81;
    hdr[n++] = (guint8)len;
  } else {
    hdr[n++] = 0x82;
    hdr[n++] = (guint8)(len >> 8);
    hdr[n++] = (guint8)len;
  }
  g_byte_array_append(a, hdr, n);
  g_byte_array_append(a, content, len);
  return a;
}

static GBytes *
make_der(const char *payload, gsize len)
{
  g_autoptr(GByteArray) inner = der_wrap(0x04, (const guint8 *)payload, len);
  GByteArray *outer = der_wrap(0x30, inner->data, inner->len);
  return g_byte_array_free_to_bytes(outer);
}

/* A "certificate" full of what a careless multipart parser trips over:
 * CRLFs, delimiter-like lines, a blank line, every byte value. */
static GBytes *
make_cert(void)
{
  GString *s = g_string_new("\r\n--sipcred-0000\r\n--x--\r\n\r\nContent-Type: text/plain\r\n");
  for (guint i = 0; i < 256; i++)
    g_string_append_c(s, (char)i);
  GBytes *der = make_der(s->str, s->len);
  g_string_free(s, TRUE);
  return der;
}

static GBytes *
make_key(void)
{
  static const char key[] = "\x02\x01\x00-----BEGIN PRIVATE KEY-----\r\n\r\n--";
  return make_der(key, sizeof(key) - 1);
}

static void
append_bytes(GString *s, GBytes *b)
{
  gsize len;
  const char *p = g_bytes_get_data(b, &len);
  g_string_append_len(s, p, len);
}

static char *
b64_lines(GBytes *b)
{
  gsize len;
  const guint8 *p = g_bytes_get_data(b, &len);
  g_autofree char *flat = g_base64_encode(p, len);
  GString *s = g_string_new(NULL);
  gsize flat_len = strlen(flat);
  for (gsize i = 0; i < flat_len; i += 64) {
    g_string_append_len(s, flat + i, MIN(64, flat_len - i));
    g_string_append(s, "\r\n");
  }
  return g_string_free(s, FALSE);
}

static char *
pem(const char *label, GBytes *b)
{
  g_autofree char *body = b64_lines(b);
  return g_strdup_printf("-----BEGIN %s-----\r\n%s-----END %s-----\r\n", label, body, label);
}

/* Parse and expect success. */
static void
parse_ok(const char *ct, const char *cte, GString *body, CoreCredbodyParseFlags flags,
         GBytes *want_cert, GBytes *want_key)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) cert = NULL, key = NULL;
  gboolean ok = core_credbody_parse(ct, cte, (const guint8 *)body->str, body->len, flags, &cert,
                                    &key, &error);
  g_assert_no_error(error);
  g_assert_true(ok);
  g_assert_nonnull(cert);
  g_assert_true(g_bytes_equal(cert, want_cert));
  if (want_key == NULL) {
    g_assert_null(key);
  } else {
    g_assert_nonnull(key);
    g_assert_true(g_bytes_equal(key, want_key));
  }
}

static void
parse_fails(const char *ct, const char *cte, GString *body, CoreCredbodyParseFlags flags,
            CoreCredbodyError code, guint status, const char *message)
{
  g_autoptr(GError) error = NULL;
  GBytes *cert = NULL, *key = NULL;
  gboolean ok = core_credbody_parse(ct, cte, (const guint8 *)body->str, body->len, flags, &cert,
                                    &key, &error);
  g_assert_false(ok);
  g_assert_null(cert);
  g_assert_null(key);
  g_assert_error(error, CORE_CREDBODY_ERROR, (gint)code);
  g_assert_cmpuint(core_credbody_error_status(error), ==, status);
  if (message != NULL)
    g_assert_cmpstr(error->message, ==, message);
}

static void
add_part(GString *s, const char *boundary, const char *headers, const char *content,
         gsize content_len)
{
  g_string_append_printf(s, "--%s\r\n%s\r\n", boundary, headers);
  g_string_append_len(s, content, content_len);
  g_string_append(s, "\r\n");
}

static void
add_der_part(GString *s, const char *boundary, const char *headers, GBytes *der)
{
  gsize len;
  const char *p = g_bytes_get_data(der, &len);
  add_part(s, boundary, headers, p, len);
}

static void
close_multipart(GString *s, const char *boundary)
{
  g_string_append_printf(s, "--%s--\r\n", boundary);
}

#define CERT_HDRS "Content-Type: application/pkix-cert\r\n"
#define KEY_HDRS "Content-Type: application/pkcs8\r\n"
#define MP "multipart/mixed;boundary=bb"

/* A body with the usual two parts in binary. */
static GString *
two_parts(GBytes *cert, GBytes *key)
{
  GString *s = g_string_new(NULL);
  add_der_part(s, "bb", CERT_HDRS, cert);
  add_der_part(s, "bb", KEY_HDRS, key);
  close_multipart(s, "bb");
  return s;
}

static void
test_build_round_trip(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autofree char *ct = NULL;
  g_autoptr(GBytes) body = core_credbody_build(cert, key, &ct);
  g_assert_nonnull(body);
  g_assert_true(g_str_has_prefix(ct, "multipart/mixed;boundary=sipcred-"));

  /* Exactly the bytes RFC 6072 7.4 and the issue ask for: binary parts
   * with Content-Disposition: signal, DER verbatim. */
  const char *boundary = ct + strlen("multipart/mixed;boundary=");
  g_autoptr(GString) want = g_string_new(NULL);
#define PART_FMT                                                                                  \
  "--%s\r\nContent-Type: %s\r\nContent-Transfer-Encoding: binary\r\n"                              \
  "Content-Disposition: signal\r\n\r\n"
  g_string_append_printf(want, PART_FMT, boundary, "application/pkix-cert");
  append_bytes(want, cert);
  g_string_append(want, "\r\n");
  g_string_append_printf(want, PART_FMT, boundary, "application/pkcs8");
  append_bytes(want, key);
  g_string_append_printf(want, "\r\n--%s--\r\n", boundary);
  gsize len;
  const char *p = g_bytes_get_data(body, &len);
  g_assert_cmpmem(p, len, want->str, want->len);

  g_autoptr(GString) s = g_string_new_len(p, len);
  parse_ok(ct, NULL, s, CORE_CREDBODY_PARSE_NONE, cert, key);
  parse_ok(ct, "binary", s, CORE_CREDBODY_PARSE_NONE, cert, key);
}

static void
test_build_cert_only(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autofree char *ct = NULL;
  g_autoptr(GBytes) body = core_credbody_build(cert, NULL, &ct);
  gsize len;
  const char *p = g_bytes_get_data(body, &len);
  g_autoptr(GString) s = g_string_new_len(p, len);
  g_assert_null(g_strstr_len(p, len, "pkcs8"));
  parse_ok(ct, NULL, s, CORE_CREDBODY_PARSE_NONE, cert, NULL);
  parse_ok(ct, NULL, s, CORE_CREDBODY_PARSE_CERT_ONLY, cert, NULL);
}

/* The same credential always gives the same bytes (the core tells a
 * repeated state from a new one by them); another certificate gives another
 * boundary; a boundary never occurs in the parts. */
static void
test_build_boundary(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autofree char *ct1 = NULL, *ct2 = NULL, *ct3 = NULL;
  g_autoptr(GBytes) b1 = core_credbody_build(cert, key, &ct1);
  g_autoptr(GBytes) b2 = core_credbody_build(cert, key, &ct2);
  g_assert_cmpstr(ct1, ==, ct2);
  g_assert_true(g_bytes_equal(b1, b2));
  g_autoptr(GBytes) other = g_bytes_new("\x30\x03\x02\x01\x07", 5);
  g_autoptr(GBytes) b3 = core_credbody_build(other, key, &ct3);
  g_assert_cmpstr(ct1, !=, ct3);
  gsize len;
  const char *p = g_bytes_get_data(cert, &len);
  g_assert_null(g_strstr_len(p, len, ct1 + strlen("multipart/mixed;boundary=")));
}

static void
test_parse_binary(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autoptr(GString) s = two_parts(cert, key);
  parse_ok(MP, NULL, s, CORE_CREDBODY_PARSE_NONE, cert, key);
  /* Media types and parameter names are case-insensitive; a quoted
   * boundary and whitespace around ";" are fine. */
  parse_ok("Multipart/Mixed ; Boundary=\"bb\"", "8bit", s, CORE_CREDBODY_PARSE_NONE, cert, key);

  /* Preamble, transport padding after a delimiter, epilogue; key first. */
  g_autoptr(GString) t = g_string_new("This is a preamble.\r\n--b b \t\r\n");
  g_string_append(t, KEY_HDRS "Content-Transfer-Encoding: 7bit\r\n\r\n");
  append_bytes(t, key);
  g_string_append(t, "\r\n");
  add_der_part(t, "b b", CERT_HDRS, cert);
  g_string_append(t, "--b b--\r\nepilogue\r\n--b b\r\n");
  parse_ok("multipart/mixed; boundary=\"b b\"", NULL, t, CORE_CREDBODY_PARSE_NONE, cert, key);
}

static void
test_parse_base64_pem(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autofree char *cert64 = b64_lines(cert);
  g_autofree char *key64 = b64_lines(key);
  g_autofree char *cert_pem = pem("CERTIFICATE", cert);
  g_autofree char *key_pem = pem("PRIVATE KEY", key);
  g_autofree char *enc_key_pem = pem("ENCRYPTED PRIVATE KEY", key);

  /* base64 parts */
  g_autoptr(GString) s = g_string_new(NULL);
  add_part(s, "bb", CERT_HDRS "Content-Transfer-Encoding: BASE64\r\n", cert64, strlen(cert64));
  add_part(s, "bb", KEY_HDRS "Content-Transfer-Encoding: base64\r\n", key64, strlen(key64));
  close_multipart(s, "bb");
  parse_ok(MP, NULL, s, CORE_CREDBODY_PARSE_NONE, cert, key);

  /* PEM parts, one of them also base64 encoded */
  g_autoptr(GString) t = g_string_new(NULL);
  g_autofree char *key_pem64 = NULL;
  {
    g_autoptr(GBytes) kp = g_bytes_new(key_pem, strlen(key_pem));
    key_pem64 = b64_lines(kp);
  }
  add_part(t, "bb", CERT_HDRS, cert_pem, strlen(cert_pem));
  add_part(t, "bb", KEY_HDRS "Content-Transfer-Encoding: base64\r\n", key_pem64,
           strlen(key_pem64));
  close_multipart(t, "bb");
  parse_ok(MP, NULL, t, CORE_CREDBODY_PARSE_NONE, cert, key);

  g_autoptr(GString) u = g_string_new(NULL);
  add_part(u, "bb", CERT_HDRS, cert_pem, strlen(cert_pem));
  add_part(u, "bb", KEY_HDRS, enc_key_pem, strlen(enc_key_pem));
  close_multipart(u, "bb");
  parse_ok(MP, NULL, u, CORE_CREDBODY_PARSE_NONE, cert, key);

  /* bare certificate: DER, base64, PEM */
  g_autoptr(GString) der = g_string_new(NULL);
  append_bytes(der, cert);
  parse_ok("application/pkix-cert", NULL, der, CORE_CREDBODY_PARSE_NONE, cert, NULL);
  parse_ok("application/pkix-cert", NULL, der, CORE_CREDBODY_PARSE_CERT_ONLY, cert, NULL);
  g_autoptr(GString) b64 = g_string_new(cert64);
  parse_ok("application/pkix-cert", "base64", b64, CORE_CREDBODY_PARSE_NONE, cert, NULL);
  g_autoptr(GString) pm = g_string_new(cert_pem);
  parse_ok("application/pkix-cert", NULL, pm, CORE_CREDBODY_PARSE_NONE, cert, NULL);

  /* base64 without the CTE header is not DER and not guessed at */
  parse_fails("application/pkix-cert", NULL, b64, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "certificate is not one DER element");
  /* junk in base64 is refused, not skipped */
  g_autoptr(GString) junk = g_string_new(cert64);
  g_string_insert_c(junk, 10, '*');
  parse_fails("application/pkix-cert", "base64", junk, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "bad base64 content");
  /* two PEM blocks */
  g_autoptr(GString) two = g_string_new(cert_pem);
  g_string_append(two, cert_pem);
  parse_fails("application/pkix-cert", NULL, two, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "bad PEM content");
  /* a PEM key where the certificate goes */
  g_autoptr(GString) wrong = g_string_new(NULL);
  add_part(wrong, "bb", CERT_HDRS, key_pem, strlen(key_pem));
  close_multipart(wrong, "bb");
  parse_fails(MP, NULL, wrong, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "PEM label does not match the content type");
  g_autoptr(GString) rsa = g_string_new(NULL);
  g_autofree char *rsa_pem = pem("RSA PRIVATE KEY", key);
  add_der_part(rsa, "bb", CERT_HDRS, cert);
  add_part(rsa, "bb", KEY_HDRS, rsa_pem, strlen(rsa_pem));
  close_multipart(rsa, "bb");
  parse_fails(MP, NULL, rsa, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "PEM label does not match the content type");
}

/* As sec-flows writes bodies: folded headers, attachment with
 * handling=required and a filename, Content-Type parameters. */
static void
test_parse_sec_flows_style(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autoptr(GString) s = g_string_new(NULL);
  add_der_part(s, "ac31fa52a112030f",
               "Content-Type: application/pkix-cert;name=bob.cer\r\n"
               "Content-Disposition: attachment;handling=required;\r\n"
               "  filename=bob.cer\r\n"
               "content-transfer-encoding: binary\r\n"
               "Content-ID: <1@example.com>\r\n",
               cert);
  add_der_part(s, "ac31fa52a112030f",
               "CONTENT-TYPE: APPLICATION/PKCS8\r\n"
               "Content-Disposition: signal; handling=optional\r\n",
               key);
  /* an optional part we don't know is skipped */
  add_part(s, "ac31fa52a112030f",
           "Content-Type: text/plain\r\nContent-Disposition: render;handling=optional\r\n",
           "hello", 5);
  close_multipart(s, "ac31fa52a112030f");
  parse_ok("multipart/mixed;boundary=ac31fa52a112030f", NULL, s, 0, cert, key);
}

static void
test_parse_malformed(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autoptr(GString) good = two_parts(cert, key);
  const CoreCredbodyError M = CORE_CREDBODY_ERROR_MALFORMED;

  parse_fails("multipart/mixed", NULL, good, 0, M, 400, "multipart boundary missing");
  parse_fails("multipart/mixed;boundary=\"\"", NULL, good, 0, M, 400,
              "multipart boundary invalid");
  g_autofree char *long_ct = g_strdup_printf("multipart/mixed;boundary=%071d", 0);
  parse_fails(long_ct, NULL, good, 0, M, 400, "multipart boundary invalid");
  parse_fails("multipart/mixed;boundary=cc", NULL, good, 0, M, 400,
              "multipart delimiter not found");
  parse_fails("multipart/mixed;boundary=b", NULL, good, 0, M, 400,
              "multipart delimiter not found");
  parse_fails(MP, NULL, good, CORE_CREDBODY_PARSE_CERT_ONLY, M, 400,
              "pkcs8 part in a certificate-only body");
  parse_fails(MP, "base64", good, 0, M, 400, "encoded multipart body");
  parse_fails(NULL, NULL, good, 0, M, 400, "Content-Type missing");
  parse_fails("multipart/", NULL, good, 0, M, 400, "bad Content-Type");
  parse_fails("multipart/mixed;boundary", NULL, good, 0, M, 400, "bad Content-Type");
  parse_fails("multipart/mixed;boundary=bb;boundary=cc", NULL, good, 0, M, 400,
              "bad Content-Type");

  g_autoptr(GString) empty = g_string_new(NULL);
  parse_fails(MP, NULL, empty, 0, M, 400, "empty body");

  /* no close delimiter */
  g_autoptr(GString) open = g_string_new(NULL);
  add_der_part(open, "bb", CERT_HDRS, cert);
  parse_fails(MP, NULL, open, 0, M, 400, "multipart close delimiter missing");
  /* a close delimiter only */
  g_autoptr(GString) none = g_string_new("--bb--\r\n");
  parse_fails(MP, NULL, none, 0, M, 400, "multipart has no parts");

  g_autoptr(GString) two_certs = g_string_new(NULL);
  add_der_part(two_certs, "bb", CERT_HDRS, cert);
  add_der_part(two_certs, "bb", CERT_HDRS, cert);
  close_multipart(two_certs, "bb");
  parse_fails(MP, NULL, two_certs, 0, M, 400, "two certificate parts");

  g_autoptr(GString) two_keys = g_string_new(NULL);
  add_der_part(two_keys, "bb", CERT_HDRS, cert);
  add_der_part(two_keys, "bb", KEY_HDRS, key);
  add_der_part(two_keys, "bb", KEY_HDRS, key);
  close_multipart(two_keys, "bb");
  parse_fails(MP, NULL, two_keys, 0, M, 400, "two pkcs8 parts");

  g_autoptr(GString) key_only = g_string_new(NULL);
  add_der_part(key_only, "bb", KEY_HDRS, key);
  close_multipart(key_only, "bb");
  parse_fails(MP, NULL, key_only, 0, M, 400, "pkcs8 part without a certificate part");

  /* bare pkcs8 */
  g_autoptr(GString) bare_key = g_string_new(NULL);
  append_bytes(bare_key, key);
  parse_fails("application/pkcs8", NULL, bare_key, 0, M, 400,
              "pkcs8 body without a certificate");
  parse_fails("application/pkcs8", NULL, bare_key, CORE_CREDBODY_PARSE_CERT_ONLY, M, 400,
              "pkcs8 in a certificate-only body");
  /* a PEM key sent as application/pkix-cert */
  g_autofree char *key_pem = pem("PRIVATE KEY", key);
  g_autoptr(GString) pem_key = g_string_new(key_pem);
  parse_fails("application/pkix-cert", NULL, pem_key, 0, M, 400,
              "pkcs8 in a certificate-only body");

  /* garbage DER: trailing byte, truncated, not a SEQUENCE */
  g_autoptr(GString) trailing = g_string_new(NULL);
  append_bytes(trailing, cert);
  g_string_append_c(trailing, 0);
  parse_fails("application/pkix-cert", NULL, trailing, 0, M, 400,
              "certificate is not one DER element");
  g_string_truncate(trailing, trailing->len - 2);
  parse_fails("application/pkix-cert", NULL, trailing, 0, M, 400,
              "certificate is not one DER element");
  g_autoptr(GString) text = g_string_new("hello world");
  parse_fails("application/pkix-cert", NULL, text, 0, M, 400,
              "certificate is not one DER element");
  g_autoptr(GString) bad_key = g_string_new(NULL);
  add_der_part(bad_key, "bb", CERT_HDRS, cert);
  add_part(bad_key, "bb", KEY_HDRS, "\x30\x80\x00\x00", 4);
  close_multipart(bad_key, "bb");
  parse_fails(MP, NULL, bad_key, 0, M, 400, "pkcs8 is not one DER element");

  /* part headers */
  g_autoptr(GString) unterminated = g_string_new("--bb\r\n" CERT_HDRS "--bb--\r\n");
  parse_fails(MP, NULL, unterminated, 0, M, 400, "part headers not terminated");
  g_autoptr(GString) dup = g_string_new(NULL);
  add_der_part(dup, "bb", CERT_HDRS CERT_HDRS, cert);
  close_multipart(dup, "bb");
  parse_fails(MP, NULL, dup, 0, M, 400, "repeated part header");
  g_autoptr(GString) nocolon = g_string_new(NULL);
  add_der_part(nocolon, "bb", CERT_HDRS "Content-Type application/pkcs8\r\n", cert);
  close_multipart(nocolon, "bb");
  parse_fails(MP, NULL, nocolon, 0, M, 400, "bad part header");
  g_autoptr(GString) badtype = g_string_new(NULL);
  add_der_part(badtype, "bb", "Content-Type: application\r\n", cert);
  close_multipart(badtype, "bb");
  parse_fails(MP, NULL, badtype, 0, M, 400, "bad part Content-Type");
  g_autoptr(GString) baddisp = g_string_new(NULL);
  add_der_part(baddisp, "bb", CERT_HDRS "Content-Disposition: signal;handling\r\n", cert);
  close_multipart(baddisp, "bb");
  parse_fails(MP, NULL, baddisp, 0, M, 400, "bad part Content-Disposition");
}

static void
test_parse_unsupported(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autoptr(GString) good = two_parts(cert, key);
  const CoreCredbodyError U = CORE_CREDBODY_ERROR_UNSUPPORTED_TYPE;

  g_autoptr(GString) text = g_string_new("hello");
  parse_fails("text/plain", NULL, text, 0, U, 415, "unsupported Content-Type");
  parse_fails("multipart/alternative;boundary=bb", NULL, good, 0, U, 415,
              "unsupported Content-Type");
  g_autoptr(GString) der = g_string_new(NULL);
  append_bytes(der, cert);
  parse_fails("application/pkix-cert", "quoted-printable", der, 0, U, 415,
              "unsupported Content-Transfer-Encoding");

  /* A part we don't understand: required by default and when it says so. */
  const char *required[] = {
      "Content-Type: text/plain\r\n",
      "Content-Type: text/plain\r\nContent-Disposition: render\r\n",
      "Content-Type: text/plain\r\nContent-Disposition: render;handling=required\r\n",
      "Content-Type: text/plain\r\nContent-Disposition: render;handling=whatever\r\n",
      "", /* no headers: text/plain */
  };
  for (guint i = 0; i < G_N_ELEMENTS(required); i++) {
    g_autoptr(GString) s = g_string_new(NULL);
    add_der_part(s, "bb", CERT_HDRS, cert);
    add_part(s, "bb", required[i], "hi", 2);
    close_multipart(s, "bb");
    parse_fails(MP, NULL, s, 0, U, 415, "unsupported required part type");
  }
  /* A disposition we don't take for a credential. */
  g_autoptr(GString) icon = g_string_new(NULL);
  add_der_part(icon, "bb", CERT_HDRS "Content-Disposition: icon\r\n", cert);
  close_multipart(icon, "bb");
  parse_fails(MP, NULL, icon, 0, U, 415, "unsupported required part disposition");
  /* ...marked optional, it is ignored, and then there is no certificate. */
  g_autoptr(GString) icon_opt = g_string_new(NULL);
  add_der_part(icon_opt, "bb", CERT_HDRS "Content-Disposition: icon;handling=optional\r\n",
               cert);
  close_multipart(icon_opt, "bb");
  parse_fails(MP, NULL, icon_opt, 0, CORE_CREDBODY_ERROR_MALFORMED, 400, "no certificate part");
  /* An optional key with an unknown disposition is dropped, the rest kept. */
  g_autoptr(GString) key_opt = g_string_new(NULL);
  add_der_part(key_opt, "bb", CERT_HDRS, cert);
  add_der_part(key_opt, "bb", KEY_HDRS "Content-Disposition: session;handling=Optional\r\n",
               key);
  close_multipart(key_opt, "bb");
  parse_ok(MP, NULL, key_opt, 0, cert, NULL);

  g_autoptr(GString) qp = g_string_new(NULL);
  add_der_part(qp, "bb", CERT_HDRS "Content-Transfer-Encoding: quoted-printable\r\n", cert);
  close_multipart(qp, "bb");
  parse_fails(MP, NULL, qp, 0, U, 415, "unsupported part Content-Transfer-Encoding");
}

static void
test_parse_nested(void)
{
  g_autoptr(GBytes) cert = make_cert();
  g_autoptr(GBytes) key = make_key();
  g_autoptr(GString) inner = two_parts(cert, key);
  g_autoptr(GString) s = g_string_new(NULL);
  add_part(s, "outer", "Content-Type: multipart/mixed;boundary=bb\r\n", inner->str, inner->len);
  close_multipart(s, "outer");
  parse_fails("multipart/mixed;boundary=outer", NULL, s, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "nested multipart");
  /* even when optional */
  g_autoptr(GString) t = g_string_new(NULL);
  add_der_part(t, "outer", CERT_HDRS, cert);
  add_part(t, "outer",
           "Content-Type: multipart/alternative;boundary=bb\r\n"
           "Content-Disposition: render;handling=optional\r\n",
           inner->str, inner->len);
  close_multipart(t, "outer");
  parse_fails("multipart/mixed;boundary=outer", NULL, t, 0, CORE_CREDBODY_ERROR_MALFORMED, 400,
              "nested multipart");
}

static void
test_parse_limits(void)
{
  g_autoptr(GBytes) cert = make_cert();
  const char *opt = "Content-Type: text/plain\r\nContent-Disposition: render;handling=optional\r\n";
  g_autoptr(GString) s = g_string_new(NULL);
  add_der_part(s, "bb", CERT_HDRS, cert);
  for (guint i = 1; i < CORE_CREDBODY_MAX_PARTS; i++)
    add_part(s, "bb", opt, "x", 1);
  g_autoptr(GString) eight = g_string_new_len(s->str, s->len);
  close_multipart(eight, "bb");
  parse_ok(MP, NULL, eight, 0, cert, NULL);
  add_part(s, "bb", opt, "x", 1);
  close_multipart(s, "bb");
  parse_fails(MP, NULL, s, 0, CORE_CREDBODY_ERROR_MALFORMED, 400, "too many parts");

  /* 100 kB: refused before anything is looked at */
  g_autoptr(GString) big = g_string_new(NULL);
  add_der_part(big, "bb", CERT_HDRS, cert);
  while (big->len <= 100 * 1024)
    g_string_append(big, "preamble-ish junk\r\n");
  parse_fails(MP, NULL, big, 0, CORE_CREDBODY_ERROR_TOO_LARGE, 413,
              "credential body too large");
}

/* A real X.509 certificate (the identity module's fuzz seed) passes the DER
 * check unchanged, bare and in a multipart, DER and PEM. */
static void
test_parse_real_cert(void)
{
  const char *root = g_getenv("SIPCRED_SOURCE_ROOT");
  if (root == NULL) {
    g_test_skip("SIPCRED_SOURCE_ROOT not set");
    return;
  }
  g_autofree char *der_path =
      g_build_filename(root, "tests", "fuzz", "corpus", "ident-cert", "user-alice.der", NULL);
  g_autofree char *pem_path =
      g_build_filename(root, "tests", "fuzz", "corpus", "ident-cert", "user-alice.pem", NULL);
  g_autofree char *der = NULL, *pem_text = NULL;
  gsize der_len, pem_len;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_get_contents(der_path, &der, &der_len, &error));
  g_assert_true(g_file_get_contents(pem_path, &pem_text, &pem_len, &error));
  g_autoptr(GBytes) cert = g_bytes_new(der, der_len);
  g_assert_true(core_credbody_der_check((const guint8 *)der, der_len));

  g_autoptr(GString) bare = g_string_new_len(der, der_len);
  parse_ok("application/pkix-cert", NULL, bare, 0, cert, NULL);
  g_autoptr(GString) bare_pem = g_string_new_len(pem_text, pem_len);
  parse_ok("application/pkix-cert", NULL, bare_pem, 0, cert, NULL);
  g_autoptr(GString) mp = g_string_new(NULL);
  add_part(mp, "bb", CERT_HDRS, pem_text, pem_len);
  close_multipart(mp, "bb");
  parse_ok(MP, NULL, mp, 0, cert, NULL);
}

static void
test_der_check(void)
{
  static const struct {
    const char *der;
    gsize len;
    gboolean ok;
  } cases[] = {
      {"\x30\x00", 2, TRUE},
      {"\x30\x03\x02\x01\x00", 5, TRUE},
      {"\x30\x03\x02\x01\x00\x00", 6, FALSE},            /* trailing byte */
      {"\x30\x04\x02\x01\x00", 5, FALSE},                /* truncated */
      {"\x30\x80\x02\x01\x00\x00\x00", 7, FALSE},        /* indefinite length */
      {"\x30\x81\x03\x02\x01\x00", 6, FALSE},            /* non-minimal length */
      {"\x30\x82\x00\x03\x02\x01\x00", 7, FALSE},        /* leading zero length byte */
      {"\x30\x85\x00\x00\x00\x00\x03", 7, FALSE},        /* length too long */
      {"\x30\x02\x02\x01", 4, FALSE},                    /* inner element truncated */
      {"\x04\x02\x30\x05", 4, TRUE},                     /* primitive: content opaque */
      {"\x1f\x81\x00\x00", 4, TRUE},                     /* high tag 128 */
      {"\x1f\x05\x00", 3, FALSE},                        /* high tag form for tag 5 */
      {"", 0, FALSE},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_test_message("case %u", i);
    g_assert_cmpint(core_credbody_der_check((const guint8 *)cases[i].der, cases[i].len), ==,
                    cases[i].ok);
  }
  /* Nesting is bounded. */
  guint8 deep[200];
  for (guint d = 0; d < 100; d++) {
    deep[2 * d] = 0x30;
    deep[2 * d + 1] = (guint8)(2 * (99 - d));
  }
  g_assert_false(core_credbody_der_check(deep, 200));
  g_assert_true(core_credbody_der_check(deep + 2 * 90, 20));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/core/credbody/build/round-trip", test_build_round_trip);
  g_test_add_func("/core/credbody/build/cert-only", test_build_cert_only);
  g_test_add_func("/core/credbody/build/boundary", test_build_boundary);
  g_test_add_func("/core/credbody/parse/binary", test_parse_binary);
  g_test_add_func("/core/credbody/parse/base64-pem", test_parse_base64_pem);
  g_test_add_func("/core/credbody/parse/sec-flows-style", test_parse_sec_flows_style);
  g_test_add_func("/core/credbody/parse/malformed", test_parse_malformed);
  g_test_add_func("/core/credbody/parse/unsupported", test_parse_unsupported);
  g_test_add_func("/core/credbody/parse/nested", test_parse_nested);
  g_test_add_func("/core/credbody/parse/limits", test_parse_limits);
  g_test_add_func("/core/credbody/parse/real-cert", test_parse_real_cert);
  g_test_add_func("/core/credbody/der-check", test_der_check);
  return g_test_run();
}
