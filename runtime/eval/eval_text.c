/* eval_text.c - long texts for the eval: the haystack essays (a directory of .txt files) and the
 * King James Bible from Debian's bible-kjv-text, read through its own reader `bible`. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval.h"
#include "sp_error.h"

/* Growable byte buffer; on allocation failure `ok` turns false and appends become no-ops. */
typedef struct strbuf {
    char *p;
    size_t n, cap;
    bool ok;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (!b->ok)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->ok = false;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_txt_suffix(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && !strcmp(name + n - 4, ".txt");
}

char *sp_eval_read_dir(const char *dir, size_t *len)
{
    DIR *d = opendir(dir);
    if (!d) {
        sp_error(errno, "cannot open the text directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    strbuf b = {.ok = true};
    struct dirent *e;
    bool oom = false;
    while ((e = readdir(d))) {
        if (!has_txt_suffix(e->d_name))
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                oom = true;
                break;
            }
            names = nn;
            cap = nc;
        }
        if (!(names[n] = strdup(e->d_name))) {
            oom = true;
            break;
        }
        n++;
    }
    closedir(d);
    if (oom) {
        sp_error(ENOMEM, "out of memory listing '%s'", dir);
        goto fail;
    }
    if (n == 0) {
        sp_error(ENOENT, "no .txt files in '%s'", dir);
        goto fail;
    }
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            sp_error(errno, "cannot open '%s': %s", path, strerror(errno));
            goto fail;
        }
        char chunk[65536];
        size_t got;
        if (b.n)
            sb_put(&b, "\n\n", 2);
        while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
            sb_put(&b, chunk, got);
        bool err = ferror(f);
        fclose(f);
        if (err) {
            sp_error(EIO, "cannot read '%s'", path);
            goto fail;
        }
    }
    if (!b.ok) {
        sp_error(ENOMEM, "out of memory reading '%s'", dir);
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (len)
        *len = b.n;
    return b.p;
fail:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(b.p);
    return NULL;
}

#define KJV_DATA "/usr/lib/bible.data"
#define KJV_READER "/usr/bin/bible"

char *sp_eval_read_kjv(const char *range, size_t *len)
{
    if (access(KJV_DATA, R_OK) != 0) {
        sp_error(ENOENT, "the King James Bible text is missing: install the Debian package bible-kjv-text "
                         "(it provides %s; scripts/setup.sh installs it)", KJV_DATA);
        return NULL;
    }
    if (access(KJV_READER, X_OK) != 0) {
        sp_error(ENOENT, "the reader of bible-kjv-text is missing: install the Debian package bible-kjv "
                         "(it provides %s; scripts/setup.sh installs it)", KJV_READER);
        return NULL;
    }
    if (!range)
        range = "gen1:1-gen50:26";
    for (const char *p = range; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-", *p)) {
            sp_error(EINVAL, "verse range '%s': only letters, digits, ':' and '-' are allowed", range);
            return NULL;
        }
    char cmd[256];
    /* -f turns pretty-printing off: one verse per line, "Ge1:1 text". */
    snprintf(cmd, sizeof cmd, "%s -f %s </dev/null 2>/dev/null", KJV_READER, range);
    FILE *p = popen(cmd, "r");
    if (!p) {
        sp_error(errno, "cannot run '%s': %s", KJV_READER, strerror(errno));
        return NULL;
    }
    strbuf b = {.ok = true};
    char line[16384], chapter[32] = "";
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *sp = strchr(line, ' ');
        char *colon = strchr(line, ':');
        if (!sp || !colon || colon > sp)
            continue;   /* not a verse line */
        /* New chapter (the reference before ':' changes): start a paragraph. */
        size_t cl = (size_t)(colon - line);
        if (cl >= sizeof chapter)
            cl = sizeof chapter - 1;
        if (strncmp(chapter, line, cl) || chapter[cl] != '\0') {
            if (b.n)
                sb_put(&b, "\n\n", 2);
            memcpy(chapter, line, cl);
            chapter[cl] = '\0';
        } else {
            sb_put(&b, " ", 1);
        }
        sb_put(&b, sp + 1, strlen(sp + 1));
    }
    int st = pclose(p);
    if (!b.ok) {
        free(b.p);
        sp_error(ENOMEM, "out of memory reading the Bible text");
        return NULL;
    }
    if (st != 0 || b.n == 0) {
        free(b.p);
        sp_error(EIO, "'%s -f %s' produced no text (exit status %d): is bible-kjv-text intact?", KJV_READER, range,
                 st);
        return NULL;
    }
    if (len)
        *len = b.n;
    return b.p;
}
