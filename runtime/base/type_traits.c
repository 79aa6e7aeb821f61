/* type_traits.c - the one table of ggml tensor types (see type_traits.h). */
#include "type_traits.h"

struct type_info {
    const char *name;
    uint32_t block_elems, block_bytes;
    bool supported;  /* computed with by the backends */
};

/* ggml's type table (ids fixed by ggml; gaps are removed types); block sizes as ggml-common.h's
 * static_asserts. */
static const struct type_info type_table[] = {
    [0] = {"F32", 1, 4, true},         [1] = {"F16", 1, 2, true},          [2] = {"Q4_0", 32, 18, true},
    [3] = {"Q4_1", 32, 20, true},      [6] = {"Q5_0", 32, 22, true},       [7] = {"Q5_1", 32, 24, true},
    [8] = {"Q8_0", 32, 34, true},      [9] = {"Q8_1", 32, 40, false},      [10] = {"Q2_K", 256, 84, false},
    [11] = {"Q3_K", 256, 110, false},  [12] = {"Q4_K", 256, 144, true},    [13] = {"Q5_K", 256, 176, true},
    [14] = {"Q6_K", 256, 210, true},   [15] = {"Q8_K", 256, 292, false},   [16] = {"IQ2_XXS", 256, 66, false},
    [17] = {"IQ2_XS", 256, 74, false}, [18] = {"IQ3_XXS", 256, 98, false}, [19] = {"IQ1_S", 256, 50, false},
    [20] = {"IQ4_NL", 32, 18, false},  [21] = {"IQ3_S", 256, 110, false},  [22] = {"IQ2_S", 256, 82, false},
    [23] = {"IQ4_XS", 256, 136, false}, [24] = {"I8", 1, 1, false},        [25] = {"I16", 1, 2, false},
    [26] = {"I32", 1, 4, false},       [27] = {"I64", 1, 8, false},        [28] = {"F64", 1, 8, false},
    [29] = {"IQ1_M", 256, 56, false},  [30] = {"BF16", 1, 2, true},        [34] = {"TQ1_0", 256, 54, false},
    [35] = {"TQ2_0", 256, 66, false},  [39] = {"MXFP4", 32, 17, false},
};

static const struct type_info *info(uint32_t type)
{
    if (type >= sizeof type_table / sizeof type_table[0] || !type_table[type].name)
        return NULL;
    return &type_table[type];
}

const char *sp_ggml_type_name(uint32_t type)
{
    const struct type_info *ti = info(type);
    return ti ? ti->name : "unknown";
}

bool sp_type_supported(uint32_t type)
{
    const struct type_info *ti = info(type);
    return ti && ti->supported;
}

int64_t sp_type_block_elems(uint32_t type)
{
    return sp_type_supported(type) ? type_table[type].block_elems : 0;
}

size_t sp_type_block_bytes(uint32_t type)
{
    return sp_type_supported(type) ? type_table[type].block_bytes : 0;
}

uint64_t sp_type_any_row_bytes(uint32_t type, int64_t n)
{
    const struct type_info *ti = info(type);
    if (!ti || n <= 0 || n % ti->block_elems)
        return 0;
    uint64_t blocks = (uint64_t)n / ti->block_elems;
    if (blocks > UINT64_MAX / ti->block_bytes) /* the GGUF reader feeds this untrusted dims */
        return 0;
    return blocks * ti->block_bytes;
}

size_t sp_type_row_bytes(uint32_t type, int64_t n)
{
    if (!sp_type_supported(type) || n < 0)
        return 0;
    if (n == 0)
        return 0;
    uint64_t b = sp_type_any_row_bytes(type, n);
    return b > SIZE_MAX ? 0 : (size_t)b;
}
