/* gpu_test_device.c - GPU smoke test: device discovery and a kernel launch checked on the host.
 * Exits 77 (ctest: skipped) when spindle has no CUDA backend or no device is present. */
#include <stdio.h>

#include "gpu.h"
#include "sp_error.h"

int main(void)
{
    int n = sp_gpu_device_count();
    if (n <= 0) {
        printf("no CUDA device (%d): skipped\n", n);
        return 77;
    }
    char desc[256];
    for (int d = 0; d < n; d++) {
        if (sp_gpu_describe(d, desc, sizeof desc)) {
            fprintf(stderr, "describe %d: %s\n", d, sp_last_error());
            return 1;
        }
        if (sp_gpu_selftest(d)) {
            fprintf(stderr, "selftest on %s: %s\n", desc, sp_last_error());
            return 1;
        }
        printf("device %d: %s: selftest ok\n", d, desc);
    }
    return 0;
}
