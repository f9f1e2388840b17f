#include "cmh/http/expose.h"

#include <errno.h>

#define PREFIX CMH_EXPOSE_PREFIX

int cmh_expose_add(struct cmh_expose *e, cmh_expose_cb cb, void *arg)
{
    if (e->nparts >= CMH_EXPOSE_MAX_PARTS)
        return -ENOSPC;
    e->parts[e->nparts].cb = cb;
    e->parts[e->nparts].arg = arg;
    e->nparts++;
    return 0;
}

void cmh_expose_render(const struct cmh_expose *e, struct cmh_buf *out)
{
    for (size_t i = 0; i < e->nparts; i++)
        e->parts[i].cb(e->parts[i].arg, out);
    cmh_expose_family(out, "build_info", "gauge", "Version of this daemon.");
    cmh_buf_printf(out, PREFIX "build_info{version=\"%s\"} 1\n", CMH_VERSION);
}

void cmh_expose_label_value(struct cmh_buf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '"')
            cmh_buf_printf(out, "\\%c", *p);
        else if (*p == '\n')
            cmh_buf_add(out, "\\n", 2);
        else
            cmh_buf_add(out, p, 1);
    }
}

void cmh_expose_sample(struct cmh_buf *out, const char *name, const char *suffix,
                       const char *labels, double v)
{
    char num[40];
    cmh_fmt_double(num, sizeof num, v);
    cmh_buf_printf(out, "%s%s%s %s\n", name, suffix, labels, num);
}

void cmh_expose_family(struct cmh_buf *out, const char *name, const char *type, const char *help)
{
    cmh_buf_printf(out, "# HELP " PREFIX "%s %s\n# TYPE " PREFIX "%s %s\n", name, help, name, type);
}

void cmh_expose_scalar(struct cmh_buf *out, const char *name, const char *type, const char *help,
                       unsigned long long v)
{
    cmh_expose_family(out, name, type, help);
    cmh_buf_printf(out, PREFIX "%s %llu\n", name, v);
}

void cmh_expose_http_server(void *arg, struct cmh_buf *out)
{
    const struct cmh_http_server *http = arg;
    cmh_expose_scalar(out, "http_accept_errors_total", "counter",
                      "Connections to this server that could not be accepted (EMFILE...).",
                      http->accept_errors);
    cmh_expose_scalar(out, "http_requests_rejected_total", "counter",
                      "Requests and connections to this server refused: too large, malformed, or "
                      "over the connection limit.",
                      http->rejected);
}

void cmh_expose_log(void *arg, struct cmh_buf *out)
{
    const struct cmh_log *log = arg;
    cmh_expose_scalar(out, "log_lines_lost_total", "counter",
                      "Log lines that could not be written (full disk, closed pipe).",
                      log->write_errors);
}
