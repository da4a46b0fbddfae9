/* Small helpers shared by the test programs (never linked into the product). */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Removes @path and, for a directory, everything below it. Missing is fine. */
void test_util_rm_rf(const char *path);

/* The Authorization value a correct client sends for @method @uri as @user
 * of @realm with @password, answering @challenge (a WWW-Authenticate value
 * with algorithm=SHA-256 and qop=auth) with nonce-count @nc and a fixed
 * cnonce. */
char *test_util_digest_authorization(const char *challenge, const char *user, const char *realm,
                                     const char *password, const char *method, const char *uri,
                                     guint nc);

G_END_DECLS
