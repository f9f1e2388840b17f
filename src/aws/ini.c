#include "cmh/aws/ini.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "cmh/core/alloc.h"

static bool blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* s[0..*n) without blanks at both ends. */
static const char *trim(const char *s, size_t *n)
{
    while (*n > 0 && blank(s[0])) {
        s++;
        (*n)--;
    }
    while (*n > 0 && blank(s[*n - 1]))
        (*n)--;
    return s;
}

/* Does the header text h[0..n) name section? "profile   x" matches "profile x". */
static bool section_is(const char *h, size_t n, const char *section)
{
    if (n > 8 && strncmp(h, "profile", 7) == 0 && blank(h[7]) &&
        strncmp(section, "profile ", 8) == 0) {
        size_t k = n - 7;
        const char *name = trim(h + 7, &k);
        return k == strlen(section + 8) && memcmp(name, section + 8, k) == 0;
    }
    return n == strlen(section) && memcmp(h, section, n) == 0;
}

int cmh_aws_ini_get(const char *buf, size_t len, const char *section, const char *key, char **out,
                    unsigned *line)
{
    *out = NULL;
    if (len > CMH_AWS_INI_MAX)
        return -EINVAL;
    bool in = false, found = false, have_key = false, any_section = false;
    unsigned no = 0;
    size_t klen = strlen(key);
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *l = p;
        p += n + (nl != NULL);
        no++;
        if (memchr(l, '\0', n) != NULL)
            goto bad;
        bool indented = n > 0 && blank(l[0]);
        const char *t = trim(l, &n);
        if (n == 0 || t[0] == '#' || t[0] == ';')
            continue;
        if (indented && have_key)
            continue; /* a continuation line: part of the value before it (nested settings) */
        if (t[0] == '[') {
            if (t[n - 1] != ']' || n < 3)
                goto bad;
            size_t hn = n - 2;
            const char *h = trim(t + 1, &hn);
            in = section_is(h, hn, section);
            any_section = true;
            found |= in;
            have_key = false;
            continue;
        }
        const char *eq = NULL;
        for (size_t i = 0; i < n && eq == NULL; i++)
            if (t[i] == '=' || t[i] == ':')
                eq = t + i;
        if (eq == NULL || eq == t || !any_section)
            goto bad; /* a key before any section: RawConfigParser refuses it too */
        have_key = true;
        size_t kn = (size_t)(eq - t);
        const char *k = trim(t, &kn);
        if (!in || kn != klen || strncasecmp(k, key, klen) != 0)
            continue;
        if (*out != NULL) {
            cmh_free_secret(*out);
            *out = NULL;
            goto bad;
        }
        size_t vn = (size_t)(t + n - (eq + 1));
        const char *v = trim(eq + 1, &vn);
        *out = cmh_strndup(v, vn);
        if (*out == NULL)
            return -ENOMEM;
    }
    return found ? 0 : -ENOENT;
bad:
    if (line != NULL)
        *line = no;
    cmh_free_secret(*out);
    *out = NULL;
    return -EINVAL;
}
