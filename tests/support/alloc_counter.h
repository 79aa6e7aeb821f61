/* alloc_counter.h - counts heap allocations made by any thread while armed, for the tests that
 * prove a hot path (decode) allocates nothing. Link tests/support/alloc_counter.c into the test. */
#ifndef SP_TEST_ALLOC_COUNTER_H
#define SP_TEST_ALLOC_COUNTER_H

/* Reset the count to 0 and start counting. */
void alloc_counter_arm(void);
/* Stop counting; returns the allocations seen since alloc_counter_arm(). */
int alloc_counter_disarm(void);

#endif
