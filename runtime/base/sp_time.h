/* sp_time.h - wall-clock timing and the repeat statistics every benchmark reports. */
#ifndef SP_TIME_H
#define SP_TIME_H

/* Seconds on CLOCK_MONOTONIC (an arbitrary origin: only differences mean anything). Thread-safe. */
double sp_now_s(void);
/* Mean and sample standard deviation (n - 1 in the denominator; 0 when n <= 1) of x[0..n), n >= 1. */
void sp_mean_sd(const double *x, int n, double *mean, double *sd);

#endif
