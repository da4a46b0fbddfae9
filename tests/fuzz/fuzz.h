/* The libFuzzer entry point every tests/fuzz/fuzz-<name>.c defines. With
 * -Dfuzz=true libFuzzer calls it; otherwise replay.c does, once per corpus
 * file, so every target also runs as an ordinary test. */
#pragma once

#include <glib.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the target asserts: abort() so libFuzzer (and the replay
 * driver) report the input, whatever NDEBUG says. */
#define FUZZ_CHECK(cond)                                                                          \
  G_STMT_START                                                                                    \
  {                                                                                               \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                    \
      abort();                                                                                    \
    }                                                                                             \
  }                                                                                               \
  G_STMT_END
