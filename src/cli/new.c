/*
 * new.c -- `cqrsd new NAME [DIR]`: writes a domain project from the
 * templates in src/cli/new/ (compiled in; see cli.h), with NAME put in.
 *
 * What it writes, and why each file is there, is the template's README.md
 * (src/cli/new/README.md); docs/tutorial.md walks through it, and
 * tests/blackbox/test_tutorial.py builds, tests and serves what it writes.
 *
 * Placeholders, replaced in file names and texts:
 *
 *   | placeholder | for NAME = my_shop |
 *   |-------------|--------------------|
 *   | @NAME@      | my_shop            |
 *   | @PASCAL@    | MyShop             |
 *   | @UPPER@     | MY_SHOP            |
 *   | @VERSION@   | cqrsd's version    |
 *
 * Nothing is overwritten: DIR must not exist or be empty, and every file
 * is created with O_EXCL.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cqrs/cqrs.h"

#define NAME_MAX_LEN 32

typedef struct names {
    const char *name;
    char pascal[NAME_MAX_LEN + 1];
    char upper[NAME_MAX_LEN + 1];
} names;

/* NAME: [a-z][a-z0-9_]{0,31}, no "__", no trailing '_', not cq_...: it
 * becomes a C prefix, file names, a stream category and table names. */
static int name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > NAME_MAX_LEN || !(s[0] >= 'a' && s[0] <= 'z') ||
        s[n - 1] == '_' || strstr(s, "__") != NULL ||
        strncmp(s, "cq_", 3) == 0 || strncmp(s, "sqlite", 6) == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_'))
            return 0;
    return 1;
}

static void make_names(const char *name, names *nm)
{
    size_t p = 0;
    int up = 1;

    nm->name = name;
    for (size_t i = 0; name[i] != '\0'; i++) {
        nm->upper[i] = name[i] == '_' ? '_' : (char)(name[i] & ~0x20);
        nm->upper[i + 1] = '\0';
        if (name[i] == '_') {
            up = 1;
            continue;
        }
        nm->pascal[p++] = up && name[i] >= 'a' && name[i] <= 'z'
                              ? (char)(name[i] & ~0x20)
                              : name[i];
        up = 0;
    }
    nm->pascal[p] = '\0';
}

/* text[0..len) with the placeholders replaced: a new string (the
 * caller's) and its length in *outlen; NULL when out of memory. */
static char *substitute(const char *text, size_t len, const names *nm,
                        size_t *outlen)
{
    const struct {
        const char *token, *value;
    } subs[] = {{"@NAME@", nm->name},
                {"@PASCAL@", nm->pascal},
                {"@UPPER@", nm->upper},
                {"@VERSION@", CQ_VERSION_STRING}};
    /* a token is at least 6 bytes and a value at most NAME_MAX_LEN */
    char *out = malloc(len * (NAME_MAX_LEN / 6 + 1) + 1);
    size_t o = 0;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len;) {
        size_t k = 0, n = sizeof subs / sizeof subs[0];
        for (; k < n; k++) {
            size_t tl = strlen(subs[k].token);
            if (len - i >= tl && memcmp(text + i, subs[k].token, tl) == 0) {
                size_t vl = strlen(subs[k].value);
                memcpy(out + o, subs[k].value, vl);
                o += vl;
                i += tl;
                break;
            }
        }
        if (k == n)
            out[o++] = text[i++];
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* 1 if dir does not exist or is an empty directory. */
static int usable_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int empty = 1;

    if (d == NULL)
        return errno == ENOENT;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            empty = 0;
    closedir(d);
    return empty;
}

/* mkdir every directory of path (not its last component). */
static int make_parents(char *path)
{
    for (char *p = strchr(path + 1, '/'); p != NULL; p = strchr(p + 1, '/')) {
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            *p = '/';
            return -1;
        }
        *p = '/';
    }
    return 0;
}

static int write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    size_t done = 0;

    if (fd < 0)
        return -1;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    return close(fd);
}

int cq_cli_new(int argc, char **argv)
{
    const char *name, *dir;
    names nm;
    int count = 0;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: cqrsd new NAME [DIR]\n");
        return 2;
    }
    name = argv[2];
    dir = argc == 4 ? argv[3] : name;
    if (!name_ok(name)) {
        fprintf(stderr,
                "cqrsd: new: NAME must be 1-%d characters of [a-z0-9_], "
                "start with a letter, not end with '_' nor hold \"__\", and "
                "not start with cq_ or sqlite (it becomes C names, a stream "
                "category and table names): '%s'\n",
                NAME_MAX_LEN, name);
        return 2;
    }
    if (!usable_dir(dir)) {
        fprintf(stderr,
                "cqrsd: new: %s exists and is not an empty "
                "directory\n",
                dir);
        return 1;
    }
    make_names(name, &nm);
    for (const cq_new_template *t = cq_new_templates; t->name != NULL; t++) {
        size_t plen, tlen;
        char *rel = substitute(t->name, strlen(t->name), &nm, &plen);
        char *text = substitute(t->text, t->len, &nm, &tlen);
        char *path = rel ? malloc(strlen(dir) + plen + 2) : NULL;
        int ok = 0;

        if (path != NULL && text != NULL) {
            sprintf(path, "%s/%s", dir, rel);
            ok = make_parents(path) == 0 && write_file(path, text, tlen) == 0;
            if (!ok)
                fprintf(stderr, "cqrsd: new: %s: %s\n", path, strerror(errno));
        } else
            fprintf(stderr, "cqrsd: new: out of memory\n");
        if (ok)
            printf("  %s\n", path);
        free(rel);
        free(text);
        free(path);
        if (!ok)
            return 1;
        count++;
    }
    printf("cqrsd: new: wrote the %s domain (%d files) in %s. Next:\n"
           "  cd %s && make && make test\n"
           "  cqrsd serve --domain ./%s.so\n"
           "(%s/README.md says more; make needs PKG_CONFIG_PATH to reach "
           "cqrs.pc)\n",
           name, count, dir, dir, name, dir);
    return 0;
}
