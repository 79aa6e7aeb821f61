/* notice_capture.c - see notice_capture.h. */
#include "notice_capture.h"

#include <stdio.h>

#include "sp_error.h"

static void capture(const char *msg, void *user)
{
    notice_capture *c = user;
    snprintf(c->last, sizeof c->last, "%s", msg);
    c->count++;
}

void notice_capture_start(notice_capture *c)
{
    c->count = 0;
    c->last[0] = 0;
    sp_set_notice_sink(capture, c);
}

void notice_capture_stop(void) { sp_set_notice_sink(NULL, NULL); }
