#include "tests/common/testutil.h"

#include <glib/gstdio.h>

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
