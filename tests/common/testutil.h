/* Small helpers shared by the test programs (never linked into the product). */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Removes @path and, for a directory, everything below it. Missing is fine. */
void test_util_rm_rf(const char *path);

G_END_DECLS
