/* sp_error.h - the library's "last error" channel.
 *
 * Library functions return 0 / negative errno codes (actions), NULL (constructors) or bool
 * (predicates). The human-readable reason (what failed, which file/key/value, what to do) is kept
 * per thread and read with sp_last_error(). The library never prints errors itself and never exits.
 */
#ifndef SP_ERROR_H
#define SP_ERROR_H

#include <stdarg.h>

/* Set the calling thread's last error message (printf-style). Returns -err when err > 0 and err
 * itself otherwise, so callers can write `return sp_error(EINVAL, "...")`. */
int sp_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last error message ("" when none). Valid until the next sp_error call. */
const char *sp_last_error(void);

/* Forget the last error. */
void sp_error_clear(void);

/* Optional one-time notices (fallbacks, warnings) go to this sink; default: stderr with "spindle: ".
 * Thread-safe. Pass NULL to restore the default. */
typedef void (*sp_notice_fn)(const char *msg, void *user);
void sp_set_notice_sink(sp_notice_fn fn, void *user);
void sp_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
