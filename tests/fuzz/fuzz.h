/* The libFuzzer entry point every tests/fuzz/fuzz-<name>.c defines. With
 * -Dfuzz=true libFuzzer calls it; otherwise replay.c does, once per corpus
 * file, so every target also runs as an ordinary test. */
#pragma once

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
