/* notice_capture.h - catch the library's notices (sp_set_notice_sink) in a test: how many were
 * emitted and the text of the last one, to assert that a fallback is announced. Not thread-safe:
 * use around single-threaded calls. Link tests/support/notice_capture.c (spindle_test_support). */
#ifndef SP_TEST_NOTICE_CAPTURE_H
#define SP_TEST_NOTICE_CAPTURE_H

typedef struct notice_capture {
    int count;         /* notices since notice_capture_start (the test may reset it to 0) */
    char last[512];    /* the last notice, truncated; "" before the first */
} notice_capture;

/* Empty c and route every notice into it until notice_capture_stop. c must outlive that. */
void notice_capture_start(notice_capture *c);

/* Restore the default sink (stderr). */
void notice_capture_stop(void);

#endif
