#include "tests/common/testutil.h"

#include <glib/gstdio.h>
#include <string.h>

void
test_util_rm_rf(const char *path)
{
  GDir *dir = g_dir_open(path, 0, NULL);

  if (dir != NULL) {
    const char *name;
    while ((name = g_dir_read_name(dir)) != NULL) {
      g_autofree char *child = g_build_filename(path, name, NULL);
      test_util_rm_rf(child);
    }
    g_dir_close(dir);
    g_rmdir(path);
  } else {
    g_unlink(path);
  }
}

char *
test_util_digest_authorization(const char *challenge, const char *user, const char *realm,
                               const char *password, const char *method, const char *uri, guint nc)
{
  g_assert_nonnull(strstr(challenge, "algorithm=SHA-256"));
  const char *n = strstr(challenge, "nonce=\"");
  g_assert_nonnull(n);
  n += strlen("nonce=\"");
  g_autofree char *nonce = g_strndup(n, strchr(n, '"') - n);
  g_autofree char *in1 = g_strdup_printf("%s:%s:%s", user, realm, password);
  g_autofree char *ha1 = g_compute_checksum_for_string(G_CHECKSUM_SHA256, in1, -1);
  g_autofree char *in2 = g_strdup_printf("%s:%s", method, uri);
  g_autofree char *ha2 = g_compute_checksum_for_string(G_CHECKSUM_SHA256, in2, -1);
  g_autofree char *nc_text = g_strdup_printf("%08x", nc);
  g_autofree char *in3 = g_strdup_printf("%s:%s:%s:cn0nce:auth:%s", ha1, nonce, nc_text, ha2);
  g_autofree char *resp = g_compute_checksum_for_string(G_CHECKSUM_SHA256, in3, -1);
  return g_strdup_printf("Digest username=\"%s\", realm=\"%s\", nonce=\"%s\", uri=\"%s\", "
                         "response=\"%s\", algorithm=SHA-256, cnonce=\"cn0nce\", nc=%s, qop=auth",
                         user, realm, nonce, uri, resp, nc_text);
}
