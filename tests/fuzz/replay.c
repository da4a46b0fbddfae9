/* Replay driver: runs every file of the corpus directories (or single
 * files) given as arguments through LLVMFuzzerTestOneInput. A crash, an
 * abort or a sanitizer report fails the test; so does an empty corpus,
 * which would test nothing. */
#define G_LOG_DOMAIN "sipcred-fuzz-replay"

#include <glib.h>
#include <stdio.h>

#include "fuzz.h"

static gboolean
run_file(const char *path, guint *count)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *data = NULL;
  gsize len;

  if (!g_file_get_contents(path, &data, &len, &error)) {
    fprintf(stderr, "replay: %s\n", error->message);
    return FALSE;
  }
  /* A copy of exactly len bytes, so ASan sees reads past the input. */
  g_autofree guint8 *copy = g_memdup2(data, len);
  LLVMFuzzerTestOneInput(copy, len);
  (*count)++;
  return TRUE;
}

static gint
compare_names(gconstpointer a, gconstpointer b)
{
  return g_strcmp0(*(char *const *)a, *(char *const *)b);
}

static gboolean
run_dir(const char *dir_path, guint *count)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GDir) dir = g_dir_open(dir_path, 0, &error);
  if (dir == NULL) {
    fprintf(stderr, "replay: %s\n", error->message);
    return FALSE;
  }
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  const char *name;
  while ((name = g_dir_read_name(dir)) != NULL)
    if (name[0] != '.')
      g_ptr_array_add(names, g_build_filename(dir_path, name, NULL));
  g_ptr_array_sort(names, compare_names);
  for (guint i = 0; i < names->len; i++)
    if (!g_file_test(names->pdata[i], G_FILE_TEST_IS_DIR) && !run_file(names->pdata[i], count))
      return FALSE;
  return TRUE;
}

int
main(int argc, char **argv)
{
  guint count = 0;

  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    gboolean ok = g_file_test(argv[i], G_FILE_TEST_IS_DIR) ? run_dir(argv[i], &count)
                                                           : run_file(argv[i], &count);
    if (!ok)
      return 1;
  }
  if (count == 0) {
    fprintf(stderr, "replay: no input found\n");
    return 1;
  }
  printf("replay: %u inputs ran\n", count);
  return 0;
}
