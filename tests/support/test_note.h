/* test_note.h - a line on stderr for what a test skipped or could not measure. Not cr_log_warn:
 * Criterion 2.4.1 (Debian) makes the whole binary exit 1 after any warning, even when every test
 * passed, so a skip would read as a failure in ctest. */
#ifndef SP_TEST_NOTE_H
#define SP_TEST_NOTE_H

#include <stdio.h>

#define test_note(...) (fprintf(stderr, "[NOTE] " __VA_ARGS__), fputc('\n', stderr))

#endif
