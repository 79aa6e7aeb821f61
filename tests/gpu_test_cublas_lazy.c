/* gpu_test_cublas_lazy.c - the binary does not link libcublas (gpu/cublas_lazy.c opens it on first
 * use): the first cuBLAS call must find the real library. Needs no device: cuBLAS names its status
 * codes without one, and the forwarders answer "not loaded" only when dlopen failed. */
#include <cublas_v2.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    const char *s = cublasGetStatusString(CUBLAS_STATUS_SUCCESS);
    if (!s || strstr(s, "not loaded")) {
        printf("FAIL cublas_lazy: %s\n", s ? s : "(null)");
        return 1;
    }
    printf("cublas_lazy: cuBLAS resolved on first use (\"%s\")\n1 passed, 0 failed\n", s);
    return 0;
}
