/* spill_dir.c - see spill_dir.h. */
#include "spill_dir.h"

#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void spill_dir_make(char *dir, size_t len, const char *prefix)
{
    const char *base = getenv("TMPDIR");
    int n = snprintf(dir, len, "%s/%s-XXXXXX", base && *base ? base : "/tmp", prefix);
    cr_assert(n > 0 && (size_t)n < len, "spill dir path for %s does not fit in %zu bytes", prefix, len);
    cr_assert(mkdtemp(dir), "mkdtemp %s: %s", dir, strerror(errno));
}

int spill_dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert(d, "opendir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

void spill_dir_remove_checked(const char *dir)
{
    cr_assert_eq(spill_dir_count(dir), 0, "spill file leaked in %s", dir);
    rmdir(dir);
}
