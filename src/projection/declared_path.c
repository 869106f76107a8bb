/*
 * declared_path.c -- parameter paths: `data.items[0].sku`, a root name
 * followed by steps ".name" or "[N]". The lexer reads them in statements,
 * the parser checks where each root may be used, and binding follows one
 * through an event's JSON.
 *
 * Threads: no state; every function reads only its arguments.
 */
#include "projection/declared_int.h"

#include "cqrs/cqrs.h"

/* 1 and *st filled if a well-formed step starts at s[*pos] (advanced past
 * it), 0 if s[*pos..n) is empty, -1 if anything else is there. */
int decl_path_step(const char *s, size_t n, size_t *pos, step *st)
{
    size_t i = *pos;

    if (i >= n)
        return 0;
    if (s[i] == '.' && i + 1 < n && is_ident_start(s[i + 1])) {
        st->key = s + i + 1;
        for (i += 2; i < n && is_ident(s[i]); i++)
            ;
        st->keylen = (size_t)(s + i - st->key);
    } else if (s[i] == '[') {
        size_t digits = 0;
        st->key = NULL;
        st->index = 0;
        for (i++; i < n && is_digit(s[i]); i++, digits++)
            st->index = st->index * 10 + (size_t)(s[i] - '0');
        if (digits == 0 || digits > INDEX_MAX_DIGITS || i >= n || s[i] != ']')
            return -1;
        i++;
    } else {
        return -1;
    }
    *pos = i;
    return 1;
}

/* The length of the root name of path s[0..n) ("data" in "data.x[1]"). */
size_t decl_path_root(const char *s, size_t n)
{
    size_t i = 0;

    while (i < n && is_ident(s[i]))
        i++;
    return i;
}

/* 1 if s[0..n) is a root from `roots` (NULL-terminated) followed by
 * zero or more well-formed steps. */
int decl_valid_path(const char *s, size_t n, const char *const *roots)
{
    size_t root = decl_path_root(s, n), pos = root;
    int found = 0;
    step st;
    int r;

    for (size_t i = 0; roots[i] != NULL && !found; i++)
        found = same(roots[i], s, root);
    if (!found)
        return 0;
    while ((r = decl_path_step(s, n, &pos, &st)) == 1)
        ;
    return r == 0;
}

static const char *const scalar_roots[] = {
    "stream_id", "version", "position", "type", "time", "day", NULL};
const char *const decl_event_roots[] = {"data", "metadata", NULL};
const char *const decl_item_roots[] = {"item", NULL};

/* 1 if `name` (n bytes) may be used in an @on block (`in_each`: an @each
 * block, where :item is also defined). */
int decl_valid_handler_param(const char *name, size_t n, int in_each)
{
    if (decl_path_root(name, n) == n)
        for (size_t i = 0; scalar_roots[i] != NULL; i++)
            if (same(scalar_roots[i], name, n))
                return 1;
    return decl_valid_path(name, n, decl_event_roots) ||
           (in_each && decl_valid_path(name, n, decl_item_roots));
}

/* Follow the steps of path[0..n) from `v`; NULL where the path leaves the
 * document (missing member, index out of range, wrong kind of value). */
static const json_t *walk(const json_t *v, const char *path, size_t n)
{
    size_t pos = 0;
    step st;
    int r;

    while (v != NULL && (r = decl_path_step(path, n, &pos, &st)) == 1) {
        if (st.key != NULL)
            v = json_is_object(v) ? json_object_getn(v, st.key, st.keylen)
                                  : NULL;
        else
            v = json_is_array(v) ? json_array_get(v, st.index) : NULL;
    }
    return v;
}

/* See declared.h. */
const json_t *cq_decl_lazy_data(cq_decl_lazy *lz)
{
    if (lz->data == NULL && lz->text != NULL) {
        lz->data = cq_json_build(lz->text); /* NULL: out of memory */
    }
    return lz->data;
}

/* See declared.h. */
int cq_declared_path_json(const char *path, const cq_decl_event *ev,
                          const json_t *element, const json_t **out)
{
    size_t n = strlen(path), root = decl_path_root(path, n);
    const json_t *doc;

    *out = NULL;
    if (decl_valid_path(path, n, decl_item_roots)) {
        if (element == NULL)
            return CQ_EINVAL;
        doc = element;
    } else if (decl_valid_path(path, n, decl_event_roots)) {
        doc = path[0] == 'd' ? ev->data : ev->metadata;
        if (path[0] == 'd' && doc == NULL && ev->lazy != NULL &&
            (doc = cq_decl_lazy_data(ev->lazy)) == NULL)
            return CQ_ENOMEM;
    } else {
        return CQ_EINVAL;
    }
    *out = walk(doc, path + root, n - root);
    return CQ_OK;
}
