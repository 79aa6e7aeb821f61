/* sp_error.c - per-thread last-error string and the notice sink. */
#include "sp_error.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

static pthread_mutex_t notice_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_notice_fn notice_fn;
static void *notice_user;

int sp_error(int err, const char *fmt, ...)
{
    /* Format into a local buffer first: callers often pass sp_last_error() as an argument to wrap
     * the previous message, and vsnprintf must not read from the buffer it writes. */
    char buf[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(last_error, buf, sizeof buf);
    return err > 0 ? -err : err;
}

const char *sp_last_error(void) { return last_error; }

void sp_error_clear(void) { last_error[0] = '\0'; }

void sp_set_notice_sink(sp_notice_fn fn, void *user)
{
    pthread_mutex_lock(&notice_lock);
    notice_fn = fn;
    notice_user = user;
    pthread_mutex_unlock(&notice_lock);
}

void sp_notice(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&notice_lock);
    if (notice_fn)
        notice_fn(msg, notice_user);
    else
        fprintf(stderr, "spindle: %s\n", msg);
    pthread_mutex_unlock(&notice_lock);
}
