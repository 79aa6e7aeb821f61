/* spill_dir.h - a scratch spill directory for the tests that put segments on the NVMe tier: make
 * it, count what is in it, and remove it asserting that no spill file was left behind. Criterion
 * assertions fail the calling test; link tests/support/spill_dir.c (the spindle_test_support
 * library). Not thread-safe (test set-up and tear-down only). */
#ifndef SP_TEST_SPILL_DIR_H
#define SP_TEST_SPILL_DIR_H

#include <stddef.h>

/* Create a fresh, empty directory $TMPDIR/<prefix>-XXXXXX (/tmp when TMPDIR is unset or empty)
 * and write its path into dir[len]; asserts on failure. */
void spill_dir_make(char *dir, size_t len, const char *prefix);

/* Number of entries in dir, not counting dot files; asserts that dir can be opened. */
int spill_dir_count(const char *dir);

/* Assert that dir holds no file (a spill file leaked otherwise), then remove it. Called from a
 * .fini fixture, a failed assertion does not fail the Criterion test itself (Criterion only prints
 * it); tests/CMakeLists.txt makes that printed "Assertion Failed" a ctest failure. */
void spill_dir_remove_checked(const char *dir);

#endif
