/* quant_act_isa.h - which instruction set the integer dot products run on, chosen once at run time
 * (private to cpu/; the build's baseline is x86-64-v3, AVX-512 VNNI is used where the CPU has it). */
#ifndef SP_QUANT_ACT_ISA_H
#define SP_QUANT_ACT_ISA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sp_qa_isa {
    SP_QA_ISA_BASE = 0,      /* the build's baseline: AVX2 (or scalar without it) */
    SP_QA_ISA_VNNI = 1,      /* AVX-512 VNNI + VL: vpdpbusd for the 4-byte lane sums */
} sp_qa_isa;

/* The ISA sp_dot_rows uses: VNNI when the CPU reports avx512vnni and avx512vl and the environment
 * variable SPINDLE_NO_AVX512 is unset or "0". Decided on the first call; thread-safe. */
sp_qa_isa sp_qa_isa_active(void);
/* Whether this build contains the VNNI kernels and this CPU can run them. */
bool sp_qa_isa_vnni_available(void);

/* sp_dot_rows for the block types with integer kernels (32-element and K-quants) on a given ISA (tests compare the two; VNNI must be
 * available). Returns false for a type without a kernel here. */
bool sp_dot_rows_isa(sp_qa_isa isa, uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                     size_t out_stride);
/* The VNNI entry points: the 32-element types (quant_act_vnni.c) and the K-quants (quant_k_vnni.c);
 * each returns false for a type it has no kernel for. */
bool sp_dot_rows_k_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                        size_t out_stride);
bool sp_dot_rows_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                      size_t out_stride);

#endif
