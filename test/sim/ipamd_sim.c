/* ipamd_sim: a fleet of simulated ipamD metrics endpoints on loopback, for tests and benchmarks.
 * Independent of the daemon's code (only libuv): one parent process (control server) and W worker
 * processes, each serving a contiguous range of nodes on its own loop.
 *
 * Usage:
 *   ipamd_sim --nodes N [--base 127.1.0.1] [--port 61678] [--workers W] [--seed S]
 *             [--template FILE] [--faults SPEC] [--truth-dir DIR] [--targets-out FILE]
 *             [--control 127.0.0.1:PORT] [--idle-timeout-ms 5000] [--churn PCT]
 *             [--restart PCT] [--trickle-ms 100]
 *
 * --template: a real ipamD scrape (e.g. test/data/ipamd/cni_test1.data) whose HELP/TYPE text and
 * go_/process_ families are served as they are; without it, the go_/process_ families the Go
 * client's default collectors export (builtin_template below).
 *
 * Node i (0-based) is named node-%06u and listens on base+i (as a 32-bit address) at --port;
 * when that address cannot be bound it listens on 127.0.0.1 with a kernel-chosen port instead.
 * --targets-out gets one line per node: "name ip port". On start the parent prints
 * "READY control=127.0.0.1:PORT nodes=N workers=W" on stdout once every listener is up.
 *
 * Control (HTTP/1.1 on --control, default 127.0.0.1 with a kernel-chosen port):
 *   POST /advance   every node moves to the next epoch; the truth of that epoch is written before
 *                   the reply {"epoch":E,"present":P,"ok":K}
 *   POST /faults    body = SPEC: replaces the fault spec now (refuse listeners follow at once)
 *   GET  /stats     {"epoch":E,"requests":R,"conns_open":C,"conns_total":T,"fds":F} (all workers)
 *   POST /quit      workers and parent exit
 *
 * Values are deterministic in (seed, node, epoch), except process_start_time_seconds, which is the
 * wall clock when a restart happened (so "started after the previous round" means what it says).
 * Per epoch every present node: gauges move (ENIs attach/detach, IPs get assigned), counters grow,
 * late series (error counters) appear on their first increment, assigned_ip_per_cidr has one series
 * per attached ENI; with probability --restart % aws-node restarts (counters restart from 0, late
 * series vanish, process_start_time_seconds moves); with --churn % a node leaves (its listener
 * closes: connection refused) and absent nodes rejoin with probability 1/3 (as a restart).
 *
 * Faults, SPEC = item[,item...], item = kind=sel[:sel...], sel = A | A-B (node indexes) | P%
 * (each node with probability P per epoch). The first matching item wins. Kinds, and the result a
 * correct scraper gets: refuse (connect refused), stall (accept, read, never answer: response
 * timeout), trickle (64 bytes per --trickle-ms: response timeout), reset (half the body then RST),
 * status500, garbage (non-HTTP bytes, then close: malformed), truncate (Content-Length, half the
 * body, then FIN), oversize (a chunked body of 6 MiB: body too large), ctype (text/html),
 * badtext (a malformed first line of awscni_assigned_ip_addresses: parse error), bomb (a gzip
 * body, asked for or not, of about 6 KB that inflates to the 6 MiB of comment lines: gzip too
 * large), gzcut (gzip, asked for or not: the first half of the stream in a complete chunked
 * response: gzip error), encoding (Content-Encoding: br: content encoding); and two that must
 * succeed: chunked (Transfer-Encoding: chunked, gzip too when asked), eofbody (no
 * Content-Length, body ends at close).
 *
 * Truth (--truth-dir DIR), written for epoch 0 at start and for every epoch at /advance:
 *   DIR/epoch-EEEEEE.nodes.jsonl  one line per node (all nodes, present or not):
 *     {"epoch":E,"node":"node-000001","addr":"127.1.0.2:61678","present":true,"fault":"none",
 *      "ok":true,"prev_ok":true,"restarted":false,
 *      "values":{"series":value,...},      every awscni_ sample served (series key = the sample
 *                                          as written: name{labels}), plus
 * process_start_time_seconds "increase":{"series":d,...}}         counters (incl. summary
 * _sum/_count): cur - prev, or cur when the node restarted or rejoined this epoch
 *   DIR/epoch-EEEEEE.json  {"epoch":E,"nodes":N,"present":P,"ok":K,
 *      "sum_gauges":{"family or series":v},   over ok nodes; assigned_ip_per_cidr as one family sum
 *      "sum_increase":{"series":v}}           over ok nodes that were ok last epoch or restarted
 *   "ok" means a correct scraper gets a good scrape of this node this epoch (present and no fault
 *   but chunked/eofbody). Values are written with %.17g, so they read back exactly.
 *
 * A request that accepts gzip gets a gzip body (Content-Encoding: gzip) in chunks of 2 KB, as
 * promhttp on Go's net/http does in ipamD; other faults are served uncompressed.
 *
 * Idle keep-alive connections are closed after --idle-timeout-ms (ipamD: 5 s), like ipamD's Go
 * server (ReadTimeout 5s, no IdleTimeout). A request with "Connection: close" is answered and
 * closed. Workers die with the parent (PR_SET_PDEATHSIG). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---------------------------------------------------------------- series model */

enum vkind { VG, VC }; /* gauge, counter */

/* Value slots of one node. Counters with LATE start absent (value < 0) and appear on their first
 * increment. */
enum {
    G_ASSIGNED,
    G_TOTAL,
    G_IPMAX,
    G_ENI_ALLOC,
    G_ENI_MAX,
    G_PREFIXES,
    G_INPROG0,               /* 5 fns */
    G_CIDR0 = G_INPROG0 + 5, /* 4 slots: present iff k < eni_allocated */
    C_ADD = G_CIDR0 + 4,
    C_DEL0,                   /* 2 reasons */
    C_IPAMDERR0 = C_DEL0 + 2, /* 3 fns, late */
    C_NOAVAIL = C_IPAMDERR0 + 3,
    C_EC2REQ0,                   /* 8 fns */
    C_EC2ERR0 = C_EC2REQ0 + 8,   /* 2 fns, late */
    C_AWSAPIERR = C_EC2ERR0 + 2, /* late */
    C_UTILSERR,                  /* late */
    C_RECONCILE0,                /* 2 fns */
    C_FORCE_ENIS = C_RECONCILE0 + 2,
    C_FORCE_IPS,
    C_PODENIERR, /* late */
    C_LATSUM0,   /* 6 apis */
    C_LATCNT0 = C_LATSUM0 + 6,
    P_START = C_LATCNT0 + 6,
    P_CPU,
    P_GOROUTINES,
    P_RSS,
    P_FDS,
    NV
};

static const char *const inprog_fns[5] = {"decreaseIPPool", "increaseIPPool", "nodeIPPoolReconcile",
                                          "nodeInit", "retryAllocENIIP"};
static const char *const del_reasons[2] = {"PodDeleted", "SetupNSFailed"};
static const char *const ipamd_err_fns[3] = {"increaseIPPoolAllocIPAddressFailed",
                                             "decreaseIPPoolFreeIPAddressFailed",
                                             "nodeIPPoolReconcileBadIMDSData"};
static const char *const ec2_fns[8] = {
    "AssignPrivateIpAddresses", "AttachNetworkInterface",
    "CreateNetworkInterface",   "DeleteNetworkInterface",
    "DescribeInstances",        "DescribeNetworkInterfaces",
    "DetachNetworkInterface",   "ModifyNetworkInterfaceAttribute"};
static const char *const ec2_err_fns[2] = {"CreateNetworkInterface", "AssignPrivateIpAddresses"};
static const char *const reconcile_fns[2] = {"eniIPPoolReconcileAdd", "eniReconcileAdd"};
static const char *const lat_apis[6] = {"AssignPrivateIpAddresses",  "AttachNetworkInterface",
                                        "CreateNetworkInterface",    "DescribeInstances",
                                        "DescribeNetworkInterfaces", "GetMetadata"};

/* One rendered line (or a static block when vidx < 0). */
struct item {
    char *text; /* static text, or the "name{labels} " prefix of a sample */
    size_t len;
    int vidx;    /* value slot, -1 for static text */
    int kind;    /* enum vkind, for the truth */
    int cidr;    /* assigned_ip_per_cidr slot: the label is per node */
    int summary; /* quantile lines of a summary: static NaN, part of the family */
};

struct family {
    char name[96];
    char *header; /* "# HELP ...\n# TYPE ...\n" */
    struct item *items;
    size_t nitems, cap;
};

struct plan {
    struct family *fams;
    size_t nfams, cap;
    /* For each value slot, the series key (for the truth) and its kind. */
    char *key[NV];
    int kind[NV];
};

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "ipamd_sim: out of memory\n");
        exit(3);
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s);
    char *p = xmalloc(n + 1);
    memcpy(p, s, n + 1);
    return p;
}

static struct family *plan_family(struct plan *p, const char *name)
{
    for (size_t i = 0; i < p->nfams; i++)
        if (strcmp(p->fams[i].name, name) == 0)
            return &p->fams[i];
    if (p->nfams == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->fams = realloc(p->fams, p->cap * sizeof *p->fams);
        if (p->fams == NULL)
            exit(3);
    }
    struct family *f = &p->fams[p->nfams++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

static void family_add(struct family *f, const char *text, int vidx, int kind, int cidr)
{
    if (f->nitems == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->items = realloc(f->items, f->cap * sizeof *f->items);
        if (f->items == NULL)
            exit(3);
    }
    struct item *it = &f->items[f->nitems++];
    it->text = xstrdup(text);
    it->len = strlen(text);
    it->vidx = vidx;
    it->kind = kind;
    it->cidr = cidr;
    it->summary = 0;
}

static void set_header(struct family *f, const char *help, const char *type)
{
    if (f->header != NULL)
        return;
    size_t n = strlen(f->name) * 2 + strlen(help) + strlen(type) + 32;
    f->header = xmalloc(n);
    snprintf(f->header, n, "# HELP %s %s\n# TYPE %s %s\n", f->name, help, f->name, type);
}

/* A sample line with a value slot; key is "name{labels}" and the rendered prefix adds a space. */
static void add_series(struct plan *p, const char *family, int vidx, int kind, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void add_series(struct plan *p, const char *family, int vidx, int kind, const char *fmt, ...)
{
    char key[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    char text[260];
    snprintf(text, sizeof text, "%s ", key);
    family_add(plan_family(p, family), text, vidx, kind, 0);
    p->key[vidx] = xstrdup(key);
    p->kind[vidx] = kind;
}

static int cmp_family(const void *a, const void *b)
{
    return strcmp(((const struct family *)a)->name, ((const struct family *)b)->name);
}

/* The template without --template: the families client_golang's default Go and process
 * collectors export next to ipamD's own (names, HELP and TYPE as client_golang v1.23 writes them;
 * the values are a plausible ipamD process, the five per-node ones replaced below). */
static const char builtin_template[] =
    "# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in "
    "garbage collection cycles.\n"
    "# TYPE go_gc_duration_seconds summary\n"
    "go_gc_duration_seconds{quantile=\"0\"} 2.4011e-05\n"
    "go_gc_duration_seconds{quantile=\"0.25\"} 4.1213e-05\n"
    "go_gc_duration_seconds{quantile=\"0.5\"} 6.0347e-05\n"
    "go_gc_duration_seconds{quantile=\"0.75\"} 0.000102519\n"
    "go_gc_duration_seconds{quantile=\"1\"} 0.004125003\n"
    "go_gc_duration_seconds_sum 0.512094113\n"
    "go_gc_duration_seconds_count 6142\n"
    "# HELP go_gc_gogc_percent Heap size target percentage configured by the user, otherwise 100. "
    "This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent "
    "function. Sourced from /gc/gogc:percent.\n"
    "# TYPE go_gc_gogc_percent gauge\n"
    "go_gc_gogc_percent 100\n"
    "# HELP go_goroutines Number of goroutines that currently exist.\n"
    "# TYPE go_goroutines gauge\n"
    "go_goroutines 31\n"
    "# HELP go_info Information about the Go environment.\n"
    "# TYPE go_info gauge\n"
    "go_info{version=\"go1.24.6\"} 1\n"
    "# HELP go_memstats_alloc_bytes Number of bytes allocated in heap and currently in use. "
    "Equals to /memory/classes/heap/objects:bytes.\n"
    "# TYPE go_memstats_alloc_bytes gauge\n"
    "go_memstats_alloc_bytes 9.384312e+06\n"
    "# HELP go_memstats_alloc_bytes_total Total number of bytes allocated in heap until now, even "
    "if released already. Equals to /gc/heap/allocs:bytes.\n"
    "# TYPE go_memstats_alloc_bytes_total counter\n"
    "go_memstats_alloc_bytes_total 1.2731990208e+10\n"
    "# HELP go_memstats_heap_objects Number of currently allocated objects. Equals to "
    "/gc/heap/objects:objects.\n"
    "# TYPE go_memstats_heap_objects gauge\n"
    "go_memstats_heap_objects 51873\n"
    "# HELP go_memstats_last_gc_time_seconds Number of seconds since 1970 of last garbage "
    "collection.\n"
    "# TYPE go_memstats_last_gc_time_seconds gauge\n"
    "go_memstats_last_gc_time_seconds 1.7650123456789e+09\n"
    "# HELP go_memstats_sys_bytes Number of bytes obtained from system. Equals to "
    "/memory/classes/total:byte.\n"
    "# TYPE go_memstats_sys_bytes gauge\n"
    "go_memstats_sys_bytes 2.4724488e+07\n"
    "# HELP go_sched_gomaxprocs_threads The current runtime.GOMAXPROCS setting, or the number of "
    "operating system threads that can execute user-level Go code simultaneously. Sourced from "
    "/sched/gomaxprocs:threads.\n"
    "# TYPE go_sched_gomaxprocs_threads gauge\n"
    "go_sched_gomaxprocs_threads 2\n"
    "# HELP go_threads Number of OS threads created.\n"
    "# TYPE go_threads gauge\n"
    "go_threads 12\n"
    "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
    "# TYPE process_cpu_seconds_total counter\n"
    "process_cpu_seconds_total 1391.13\n"
    "# HELP process_max_fds Maximum number of open file descriptors.\n"
    "# TYPE process_max_fds gauge\n"
    "process_max_fds 1.048576e+06\n"
    "# HELP process_network_receive_bytes_total Number of bytes received by the process over the "
    "network.\n"
    "# TYPE process_network_receive_bytes_total counter\n"
    "process_network_receive_bytes_total 8.1736812e+07\n"
    "# HELP process_network_transmit_bytes_total Number of bytes sent by the process over the "
    "network.\n"
    "# TYPE process_network_transmit_bytes_total counter\n"
    "process_network_transmit_bytes_total 4.4092318e+07\n"
    "# HELP process_open_fds Number of open file descriptors.\n"
    "# TYPE process_open_fds gauge\n"
    "process_open_fds 14\n"
    "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
    "# TYPE process_resident_memory_bytes gauge\n"
    "process_resident_memory_bytes 4.6596096e+07\n"
    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
    "# TYPE process_start_time_seconds gauge\n"
    "process_start_time_seconds 1.76498112e+09\n"
    "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
    "# TYPE process_virtual_memory_bytes gauge\n"
    "process_virtual_memory_bytes 1.303420928e+09\n"
    "# HELP process_virtual_memory_max_bytes Maximum amount of virtual memory available in "
    "bytes.\n"
    "# TYPE process_virtual_memory_max_bytes gauge\n"
    "process_virtual_memory_max_bytes 1.8446744073709552e+19\n";

/* Reads the template (a file, or builtin_template when template_path is NULL): HELP/TYPE text of
 * every family, and go_/process_ lines (kept as they are, except the few that vary per node).
 * Then adds our awscni_ families and sorts by name, as the Go client orders them. */
static void plan_build(struct plan *p, const char *template_path)
{
    memset(p, 0, sizeof *p);
    FILE *f = template_path != NULL
                  ? fopen(template_path, "r")
                  : fmemopen((void *)builtin_template, sizeof builtin_template - 1, "r");
    if (f == NULL) {
        fprintf(stderr, "ipamd_sim: cannot open template %s: %s\n",
                template_path != NULL ? template_path : "(builtin)", strerror(errno));
        exit(2);
    }
    char line[4096];
    char help[2048] = "";
    char help_name[256] = "";
    while (fgets(line, sizeof line, f) != NULL) {
        char name[256];
        if (strncmp(line, "# HELP ", 7) == 0) {
            char *sp = strchr(line + 7, ' ');
            if (sp == NULL)
                continue;
            snprintf(help_name, sizeof help_name, "%.*s", (int)(sp - (line + 7)), line + 7);
            snprintf(help, sizeof help, "%s", sp + 1);
            help[strcspn(help, "\n")] = '\0';
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char type[64];
            if (sscanf(line + 7, "%255s %63s", name, type) != 2)
                continue;
            struct family *fam = plan_family(p, name);
            set_header(fam, strcmp(help_name, name) == 0 ? help : "", type);
            continue;
        }
        if (line[0] == '#' || line[0] == '\n')
            continue;
        size_t nl = strcspn(line, "{ ");
        snprintf(name, sizeof name, "%.*s", (int)nl, line);
        if (strncmp(name, "go_", 3) != 0 && strncmp(name, "process_", 8) != 0)
            continue;
        /* the family of a _sum/_count line is the summary's */
        char fam_name[256];
        snprintf(fam_name, sizeof fam_name, "%s", name);
        size_t fl = strlen(fam_name);
        if (fl > 4 && strcmp(fam_name + fl - 4, "_sum") == 0 &&
            strstr(fam_name, "go_gc_duration") != NULL)
            fam_name[fl - 4] = '\0';
        else if (fl > 6 && strcmp(fam_name + fl - 6, "_count") == 0 &&
                 strstr(fam_name, "go_gc_duration") != NULL)
            fam_name[fl - 6] = '\0';
        struct family *fam = plan_family(p, fam_name);
        int slot = strcmp(name, "process_start_time_seconds") == 0      ? P_START
                   : strcmp(name, "process_cpu_seconds_total") == 0     ? P_CPU
                   : strcmp(name, "go_goroutines") == 0                 ? P_GOROUTINES
                   : strcmp(name, "process_resident_memory_bytes") == 0 ? P_RSS
                   : strcmp(name, "process_open_fds") == 0              ? P_FDS
                                                                        : -1;
        if (slot >= 0) {
            char text[300];
            snprintf(text, sizeof text, "%s ", name);
            family_add(fam, text, slot, slot == P_CPU ? VC : VG, 0);
            p->key[slot] = xstrdup(name);
            p->kind[slot] = slot == P_CPU ? VC : VG;
        } else {
            family_add(fam, line, -1, VG, 0);
        }
    }
    fclose(f);

    /* Our awscni_ families (HELP/TYPE from the template when it has them). */
    set_header(plan_family(p, "awscni_assigned_ip_addresses"),
               "The number of IP addresses assigned to pods", "gauge");
    add_series(p, "awscni_assigned_ip_addresses", G_ASSIGNED, VG, "awscni_assigned_ip_addresses");
    set_header(plan_family(p, "awscni_total_ip_addresses"), "The total number of IP addresses",
               "gauge");
    add_series(p, "awscni_total_ip_addresses", G_TOTAL, VG, "awscni_total_ip_addresses");
    set_header(plan_family(p, "awscni_ip_max"),
               "The maximum number of IP addresses that can be allocated to the instance", "gauge");
    add_series(p, "awscni_ip_max", G_IPMAX, VG, "awscni_ip_max");
    set_header(plan_family(p, "awscni_eni_allocated"), "The number of ENIs allocated", "gauge");
    add_series(p, "awscni_eni_allocated", G_ENI_ALLOC, VG, "awscni_eni_allocated");
    set_header(plan_family(p, "awscni_eni_max"),
               "The maximum number of ENIs that can be attached to the instance", "gauge");
    add_series(p, "awscni_eni_max", G_ENI_MAX, VG, "awscni_eni_max");
    set_header(plan_family(p, "awscni_total_ipv4_prefixes"), "The total number of IPv4 prefixes",
               "gauge");
    add_series(p, "awscni_total_ipv4_prefixes", G_PREFIXES, VG, "awscni_total_ipv4_prefixes");
    set_header(plan_family(p, "awscni_ipamd_action_inprogress"),
               "The number of ipamd actions in progress", "gauge");
    for (int i = 0; i < 5; i++)
        add_series(p, "awscni_ipamd_action_inprogress", G_INPROG0 + i, VG,
                   "awscni_ipamd_action_inprogress{fn=\"%s\"}", inprog_fns[i]);
    struct family *cidr = plan_family(p, "awscni_assigned_ip_per_cidr");
    set_header(cidr, "The total number of IP addresses assigned per cidr", "gauge");
    for (int i = 0; i < 4; i++) {
        family_add(cidr, "awscni_assigned_ip_per_cidr", G_CIDR0 + i, VG, 1);
        p->key[G_CIDR0 + i] = xstrdup("awscni_assigned_ip_per_cidr");
        p->kind[G_CIDR0 + i] = VG;
    }
    set_header(plan_family(p, "awscni_add_ip_req_count"), "The number of add IP address requests",
               "counter");
    add_series(p, "awscni_add_ip_req_count", C_ADD, VC, "awscni_add_ip_req_count");
    set_header(plan_family(p, "awscni_del_ip_req_count"),
               "The number of delete IP address requests", "counter");
    for (int i = 0; i < 2; i++)
        add_series(p, "awscni_del_ip_req_count", C_DEL0 + i, VC,
                   "awscni_del_ip_req_count{reason=\"%s\"}", del_reasons[i]);
    set_header(plan_family(p, "awscni_ipamd_error_count"),
               "The number of errors encountered in ipamd", "counter");
    for (int i = 0; i < 3; i++)
        add_series(p, "awscni_ipamd_error_count", C_IPAMDERR0 + i, VC,
                   "awscni_ipamd_error_count{fn=\"%s\"}", ipamd_err_fns[i]);
    set_header(plan_family(p, "awscni_no_available_ip_addresses"),
               "The number of pod IP assignments that fail due to no available IP addresses",
               "counter");
    add_series(p, "awscni_no_available_ip_addresses", C_NOAVAIL, VC,
               "awscni_no_available_ip_addresses");
    set_header(plan_family(p, "awscni_ec2api_req_count"),
               "The number of requests made to EC2 APIs by CNI", "counter");
    for (int i = 0; i < 8; i++)
        add_series(p, "awscni_ec2api_req_count", C_EC2REQ0 + i, VC,
                   "awscni_ec2api_req_count{fn=\"%s\"}", ec2_fns[i]);
    set_header(plan_family(p, "awscni_ec2api_error_count"),
               "The number of failed EC2 APIs requests", "counter");
    for (int i = 0; i < 2; i++)
        add_series(p, "awscni_ec2api_error_count", C_EC2ERR0 + i, VC,
                   "awscni_ec2api_error_count{fn=\"%s\"}", ec2_err_fns[i]);
    set_header(plan_family(p, "awscni_aws_api_error_count"),
               "The number of times AWS API returns an error", "counter");
    add_series(p, "awscni_aws_api_error_count", C_AWSAPIERR, VC,
               "awscni_aws_api_error_count{api=\"DeleteNetworkInterface\","
               "error=\"InvalidParameterValue\"}");
    set_header(plan_family(p, "awscni_aws_utils_error_count"),
               "The number of errors not handled in awsutils library", "counter");
    add_series(p, "awscni_aws_utils_error_count", C_UTILSERR, VC,
               "awscni_aws_utils_error_count{error=\"ResourceNotFound\",fn=\"getENIMetadata\"}");
    set_header(plan_family(p, "awscni_reconcile_count"),
               "The number of times ipamd reconciles on ENIs and IP/Prefix addresses", "counter");
    for (int i = 0; i < 2; i++)
        add_series(p, "awscni_reconcile_count", C_RECONCILE0 + i, VC,
                   "awscni_reconcile_count{fn=\"%s\"}", reconcile_fns[i]);
    set_header(plan_family(p, "awscni_force_removed_enis"),
               "The number of ENIs force removed while they had assigned pods", "counter");
    add_series(p, "awscni_force_removed_enis", C_FORCE_ENIS, VC, "awscni_force_removed_enis");
    set_header(plan_family(p, "awscni_force_removed_ips"),
               "The number of IPs force removed while they had assigned pods", "counter");
    add_series(p, "awscni_force_removed_ips", C_FORCE_IPS, VC, "awscni_force_removed_ips");
    set_header(plan_family(p, "awscni_pod_eni_error_count"),
               "The number of errors encountered for pod ENIs", "counter");
    add_series(p, "awscni_pod_eni_error_count", C_PODENIERR, VC,
               "awscni_pod_eni_error_count{fn=\"assignPodENI\"}");
    struct family *lat = plan_family(p, "awscni_aws_api_latency_ms");
    set_header(lat, "AWS API call latency in ms", "summary");
    for (int i = 0; i < 6; i++) {
        static const char *const qs[3] = {"0.5", "0.9", "0.99"};
        for (int q = 0; q < 3; q++) {
            char text[256];
            snprintf(text, sizeof text,
                     "awscni_aws_api_latency_ms{api=\"%s\",error=\"false\",quantile=\"%s\"} NaN\n",
                     lat_apis[i], qs[q]);
            family_add(lat, text, -1, VG, 0);
        }
        add_series(p, "awscni_aws_api_latency_ms", C_LATSUM0 + i, VC,
                   "awscni_aws_api_latency_ms_sum{api=\"%s\",error=\"false\"}", lat_apis[i]);
        add_series(p, "awscni_aws_api_latency_ms", C_LATCNT0 + i, VC,
                   "awscni_aws_api_latency_ms_count{api=\"%s\",error=\"false\"}", lat_apis[i]);
    }
    /* awscni_ families of the template that we do not model are dropped (none today). */
    size_t w = 0;
    for (size_t i = 0; i < p->nfams; i++) {
        if (strncmp(p->fams[i].name, "awscni_", 7) == 0 && p->fams[i].nitems == 0)
            continue;
        p->fams[w++] = p->fams[i];
    }
    p->nfams = w;
    qsort(p->fams, p->nfams, sizeof *p->fams, cmp_family);
    for (int v = 0; v < NV; v++)
        if (p->key[v] == NULL) {
            fprintf(stderr, "ipamd_sim: template lacks a series for slot %d\n", v);
            exit(2);
        }
}

/* ---------------------------------------------------------------- deterministic values */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s;
};

static struct rng rng_for(uint64_t seed, uint64_t node, uint64_t epoch, uint64_t what)
{
    struct rng r = {mix(seed ^ mix(node ^ mix(epoch ^ mix(what))))};
    return r;
}

static uint64_t rnd(struct rng *r)
{
    r->s = mix(r->s);
    return r->s;
}

/* uniform in [lo, hi] */
static int64_t rnd_in(struct rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rnd(r) % (uint64_t)(hi - lo + 1));
}

/* true with probability pct percent */
static int chance(struct rng *r, double pct)
{
    return (double)(rnd(r) % 1000000) < pct * 10000.0;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

/* ---------------------------------------------------------------- faults */

enum fault {
    F_NONE,
    F_REFUSE,
    F_STALL,
    F_TRICKLE,
    F_RESET,
    F_500,
    F_GARBAGE,
    F_TRUNCATE,
    F_OVERSIZE,
    F_CTYPE,
    F_BADTEXT,
    F_CHUNKED,
    F_EOFBODY,
    F_BOMB,
    F_GZCUT,
    F_ENCODING,
    F_N
};

static const char *const fault_names[F_N] = {
    "none",     "refuse", "stall",   "trickle", "reset",   "status500", "garbage", "truncate",
    "oversize", "ctype",  "badtext", "chunked", "eofbody", "bomb",      "gzcut",   "encoding"};

struct fault_sel {
    int kind;
    uint32_t lo, hi; /* node range, inclusive */
    double pct;      /* > 0: random per (node, epoch) instead of a range */
};

struct faults {
    struct fault_sel *v;
    size_t n;
};

static int faults_parse(const char *spec, struct faults *out, char *err, size_t errlen)
{
    struct faults f = {NULL, 0};
    size_t cap = 0;
    char *copy = xstrdup(spec);
    char *items = copy;
    for (char *item; (item = strsep(&items, ",")) != NULL;) {
        while (*item == ' ')
            item++;
        if (*item == '\0')
            continue;
        char *eq = strchr(item, '=');
        if (eq == NULL) {
            snprintf(err, errlen, "fault item '%s' lacks '='", item);
            goto bad;
        }
        *eq = '\0';
        int kind = -1;
        for (int k = 1; k < F_N; k++)
            if (strcmp(item, fault_names[k]) == 0)
                kind = k;
        if (kind < 0) {
            snprintf(err, errlen, "unknown fault kind '%s'", item);
            goto bad;
        }
        char *sels = eq + 1;
        for (char *sel; (sel = strsep(&sels, ":")) != NULL;) {
            struct fault_sel s = {kind, 0, 0, 0};
            if (*sel == '\0') {
                snprintf(err, errlen, "empty node selector for '%s'", item);
                goto bad;
            }
            char *end;
            errno = 0;
            if (sel[strlen(sel) - 1] == '%') {
                s.pct = strtod(sel, &end);
                if (errno != 0 || *end != '%' || s.pct <= 0 || s.pct > 100) {
                    snprintf(err, errlen, "bad percentage '%s'", sel);
                    goto bad;
                }
            } else {
                unsigned long lo = strtoul(sel, &end, 10), hi = lo;
                if (errno == 0 && *end == '-')
                    hi = strtoul(end + 1, &end, 10);
                if (errno != 0 || *end != '\0' || end == sel || hi < lo || hi > UINT32_MAX) {
                    snprintf(err, errlen, "bad node range '%s'", sel);
                    goto bad;
                }
                s.lo = (uint32_t)lo;
                s.hi = (uint32_t)hi;
            }
            if (f.n == cap) {
                cap = cap ? cap * 2 : 8;
                f.v = realloc(f.v, cap * sizeof *f.v);
                if (f.v == NULL)
                    exit(3);
            }
            f.v[f.n++] = s;
        }
    }
    free(copy);
    free(out->v);
    *out = f;
    return 0;
bad:
    free(copy);
    free(f.v);
    return -1;
}

static int fault_of(const struct faults *f, uint64_t seed, uint32_t node, uint64_t epoch)
{
    for (size_t i = 0; i < f->n; i++) {
        const struct fault_sel *s = &f->v[i];
        if (s->pct > 0) {
            struct rng r = rng_for(seed, node, epoch, 0xfa017u + (uint64_t)i);
            if (chance(&r, s->pct))
                return s->kind;
        } else if (node >= s->lo && node <= s->hi) {
            return s->kind;
        }
    }
    return F_NONE;
}

static int fault_ok(int fault)
{
    return fault == F_NONE || fault == F_CHUNKED || fault == F_EOFBODY;
}

/* ---------------------------------------------------------------- options */

struct opts {
    uint32_t nodes;
    uint32_t base; /* host order */
    uint16_t port;
    unsigned workers;
    uint64_t seed;
    const char *template_path;
    const char *faults_spec;
    const char *truth_dir;
    const char *targets_out;
    char control_ip[64];
    uint16_t control_port;
    uint64_t idle_timeout_ms;
    double churn, restart;
    uint64_t trickle_ms;
};

/* ---------------------------------------------------------------- worker */

struct sim_node;

struct worker {
    uv_loop_t loop;
    const struct opts *o;
    const struct plan *plan;
    unsigned id;
    uint32_t first, count; /* global index of our first node, number of nodes */
    struct sim_node *nodes;
    double *vals; /* count * NV */
    uint64_t epoch;
    struct faults faults;
    uv_poll_t ctl_poll;
    int ctl_fd;
    uv_timer_t sweep;
    struct sim_conn *idle_head, *idle_tail; /* keep-alive connections waiting, oldest first */
    char *out;                              /* render buffer */
    size_t out_cap;
    char *pad; /* the oversize body, shared by all writes */
    size_t pad_len;
    unsigned char *bomb; /* pad gzip-compressed, made at the first bomb */
    size_t bomb_len;
    uint64_t requests, conns_open, conns_total;
    FILE *truth;
};

struct sim_node {
    uv_tcp_t *listener; /* NULL when closed (absent or refusing) */
    struct sockaddr_in addr;
    uint8_t present, restarted, fault, ok, prev_ok;
    struct worker *w;
    uint32_t idx;      /* local */
    unsigned char *gz; /* gzip body of epoch gz_epoch - 1 (0: none), for clients that ask */
    size_t gz_len;
    uint64_t gz_epoch;
};

enum conn_state { SC_READING, SC_STALLED, SC_TRICKLE, SC_IDLE, SC_CLOSING };

struct sim_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* trickle only */
    int timer_used;
    int pending; /* handles to close */
    struct worker *w;
    uint32_t node; /* local index */
    enum conn_state state;
    char req[2048];
    size_t req_len;
    int close_after;
    int gzip;   /* the request accepts gzip: answered like promhttp does */
    char *slow; /* trickle: the whole response */
    size_t slow_len, slow_off;
    uint64_t last_ms;
    struct sim_conn *prev, *next; /* idle list */
    int in_idle;
};

struct write_req {
    uv_write_t req;
    struct sim_conn *c;
    int close_after;
    char data[]; /* copy of the unsent part, when any */
};

static void idle_remove(struct worker *w, struct sim_conn *c)
{
    if (!c->in_idle)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->idle_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        w->idle_tail = c->prev;
    c->prev = c->next = NULL;
    c->in_idle = 0;
}

static void idle_push(struct worker *w, struct sim_conn *c)
{
    idle_remove(w, c);
    c->last_ms = uv_now(&w->loop);
    c->prev = w->idle_tail;
    c->next = NULL;
    if (w->idle_tail)
        w->idle_tail->next = c;
    else
        w->idle_head = c;
    w->idle_tail = c;
    c->in_idle = 1;
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct sim_conn *c = h->data;
    if (--c->pending == 0) {
        free(c->slow);
        free(c);
    }
}

static void conn_close(struct sim_conn *c, int reset)
{
    if (c->state == SC_CLOSING)
        return;
    struct worker *w = c->w;
    c->state = SC_CLOSING;
    idle_remove(w, c);
    w->conns_open--;
    if (c->timer_used) {
        uv_timer_stop(&c->timer);
        uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    }
    if (reset)
        uv_tcp_close_reset(&c->tcp, on_conn_handle_closed);
    else
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

/* Formats v as the Go client would for integers, %.17g otherwise (reads back exactly). */
static size_t fmt_value(char *p, double v)
{
    if (isnan(v)) {
        memcpy(p, "NaN", 3);
        return 3;
    }
    if (v >= 0 && v < 1e15 && v == (double)(uint64_t)v) {
        char tmp[24];
        size_t n = 0;
        uint64_t u = (uint64_t)v;
        do {
            tmp[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        for (size_t i = 0; i < n; i++)
            p[i] = tmp[n - 1 - i];
        return n;
    }
    return (size_t)snprintf(p, 32, "%.17g", v);
}

static void cidr_label(char *buf, size_t len, uint32_t gnode, int k)
{
    snprintf(buf, len, "awscni_assigned_ip_per_cidr{cidr=\"10.%u.%u.%u/28\"}", (gnode >> 8) & 0xff,
             gnode & 0xff, (unsigned)k * 16);
}

/* Renders node's body at w->out + off; returns its length. */
static size_t render_body(struct worker *w, uint32_t node, size_t off)
{
    const struct plan *p = w->plan;
    const double *v = &w->vals[(size_t)node * NV];
    size_t need = off + 64 * 1024;
    if (w->out_cap < need) {
        w->out = realloc(w->out, need);
        if (w->out == NULL)
            exit(3);
        w->out_cap = need;
    }
    char *o = w->out + off;
    for (size_t f = 0; f < p->nfams; f++) {
        const struct family *fam = &p->fams[f];
        /* A family with no present series is not written at all (as the Go client does). */
        int any = 0;
        for (size_t i = 0; i < fam->nitems && !any; i++) {
            const struct item *it = &fam->items[i];
            if (it->vidx < 0)
                any = 1;
            else if (it->cidr)
                any = (it->vidx - G_CIDR0) < v[G_ENI_ALLOC];
            else
                any = v[it->vidx] >= 0;
        }
        if (!any)
            continue;
        if (fam->header != NULL) {
            size_t hl = strlen(fam->header);
            memcpy(o, fam->header, hl);
            o += hl;
        }
        for (size_t i = 0; i < fam->nitems; i++) {
            const struct item *it = &fam->items[i];
            if (it->vidx < 0) {
                memcpy(o, it->text, it->len);
                o += it->len;
                continue;
            }
            if (it->cidr) {
                int k = it->vidx - G_CIDR0;
                if (k >= v[G_ENI_ALLOC])
                    continue;
                char lab[96];
                cidr_label(lab, sizeof lab, w->first + node, k);
                size_t ll = strlen(lab);
                memcpy(o, lab, ll);
                o += ll;
                *o++ = ' ';
            } else {
                if (v[it->vidx] < 0)
                    continue;
                memcpy(o, it->text, it->len);
                o += it->len;
            }
            o += fmt_value(o, v[it->vidx]);
            *o++ = '\n';
        }
    }
    return (size_t)(o - (w->out + off));
}

/* ---- node evolution ---- */

static void node_params(const struct opts *o, uint32_t gnode, int *eni_max, int *ips_per_eni)
{
    static const int emax[4] = {3, 4, 8, 15};
    static const int ipe[4] = {5, 10, 15, 29};
    struct rng r = rng_for(o->seed, gnode, 0, 0x7e7e);
    *eni_max = emax[rnd(&r) % 4];
    *ips_per_eni = ipe[rnd(&r) % 4];
}

static void counters_zero(double *v)
{
    for (int i = C_ADD; i < P_START; i++)
        v[i] = 0;
    for (int i = 0; i < 3; i++)
        v[C_IPAMDERR0 + i] = -1;
    v[C_EC2ERR0] = v[C_EC2ERR0 + 1] = -1;
    v[C_AWSAPIERR] = v[C_UTILSERR] = v[C_PODENIERR] = -1;
    v[P_CPU] = 0;
}

static void bump_late(double *x, int64_t by)
{
    if (by <= 0)
        return;
    *x = (*x < 0 ? 0 : *x) + (double)by;
}

static void node_increments(struct rng *r, double *v)
{
    v[C_ADD] += (double)rnd_in(r, 0, 4);
    v[C_DEL0] += (double)rnd_in(r, 0, 4);
    if (chance(r, 2))
        v[C_DEL0 + 1] += 1;
    for (int i = 0; i < 3; i++)
        if (chance(r, 3))
            bump_late(&v[C_IPAMDERR0 + i], rnd_in(r, 1, 3));
    if (v[G_ASSIGNED] >= v[G_TOTAL])
        v[C_NOAVAIL] += (double)rnd_in(r, 0, 3);
    for (int i = 0; i < 8; i++)
        v[C_EC2REQ0 + i] += (double)rnd_in(r, 0, i == 5 ? 6 : 2);
    for (int i = 0; i < 2; i++)
        if (chance(r, 2))
            bump_late(&v[C_EC2ERR0 + i], 1);
    if (chance(r, 1))
        bump_late(&v[C_AWSAPIERR], rnd_in(r, 1, 2));
    if (chance(r, 1))
        bump_late(&v[C_UTILSERR], 1);
    v[C_RECONCILE0] += 1;
    v[C_RECONCILE0 + 1] += (double)rnd_in(r, 0, 1);
    if (chance(r, 0.5))
        v[C_FORCE_ENIS] += 1;
    if (chance(r, 0.5))
        v[C_FORCE_IPS] += (double)rnd_in(r, 1, 3);
    if (chance(r, 1))
        bump_late(&v[C_PODENIERR], 1);
    for (int i = 0; i < 6; i++) {
        int64_t n = rnd_in(r, 0, i == 5 ? 40 : 3);
        v[C_LATCNT0 + i] += (double)n;
        v[C_LATSUM0 + i] += (double)(n * rnd_in(r, i == 5 ? 0 : 50, i == 5 ? 2 : 500));
    }
    v[P_CPU] = (double)((int64_t)(v[P_CPU] * 100 + 0.5) + rnd_in(r, 1, 300)) / 100.0;
}

static void node_gauges(struct rng *r, double *v, int eni_max, int ipe)
{
    if (chance(r, 10)) {
        v[G_ENI_ALLOC] += chance(r, 50) ? 1 : -1;
        if (v[G_ENI_ALLOC] < 1)
            v[G_ENI_ALLOC] = 1;
        if (v[G_ENI_ALLOC] > eni_max)
            v[G_ENI_ALLOC] = eni_max;
    }
    v[G_TOTAL] = v[G_ENI_ALLOC] * ipe;
    v[G_ASSIGNED] += (double)rnd_in(r, -3, 3);
    if (v[G_ASSIGNED] < 0)
        v[G_ASSIGNED] = 0;
    if (v[G_ASSIGNED] > v[G_TOTAL])
        v[G_ASSIGNED] = v[G_TOTAL];
    for (int i = 0; i < 5; i++)
        v[G_INPROG0 + i] = chance(r, 5) ? 1 : 0;
    /* assigned IPs spread over the ENIs' CIDRs, in order */
    double left = v[G_ASSIGNED];
    for (int k = 0; k < 4; k++) {
        double here = 0;
        if (k < v[G_ENI_ALLOC]) {
            here = left < ipe ? left : ipe;
            if (k == v[G_ENI_ALLOC] - 1 || k == 3)
                here = left;
        }
        v[G_CIDR0 + k] = here;
        left -= here;
    }
    v[P_GOROUTINES] = (double)rnd_in(r, 18, 40);
    v[P_RSS] = (double)(rnd_in(r, 30000, 60000) * 1024);
    v[P_FDS] = (double)rnd_in(r, 8, 24);
}

static void node_init(struct worker *w, uint32_t i, double now)
{
    const struct opts *o = w->o;
    uint32_t g = w->first + i;
    double *v = &w->vals[(size_t)i * NV];
    int eni_max, ipe;
    node_params(o, g, &eni_max, &ipe);
    struct rng r = rng_for(o->seed, g, 0, 1);
    v[G_ENI_MAX] = eni_max;
    v[G_IPMAX] = eni_max * ipe;
    v[G_PREFIXES] = 0;
    v[G_ENI_ALLOC] = (double)rnd_in(&r, 1, eni_max);
    v[G_TOTAL] = v[G_ENI_ALLOC] * ipe;
    v[G_ASSIGNED] = (double)rnd_in(&r, 0, (int64_t)v[G_TOTAL]);
    counters_zero(v);
    /* A node that has been up a while: counters far from zero, some late series present. */
    v[C_ADD] = (double)rnd_in(&r, 0, 20000);
    v[C_DEL0] = (double)rnd_in(&r, 0, 20000);
    v[C_DEL0 + 1] = (double)rnd_in(&r, 0, 20);
    for (int k = 0; k < 8; k++)
        v[C_EC2REQ0 + k] = (double)rnd_in(&r, 0, 500);
    for (int k = 0; k < 3; k++)
        if (chance(&r, 30))
            v[C_IPAMDERR0 + k] = (double)rnd_in(&r, 1, 50);
    v[C_NOAVAIL] = (double)rnd_in(&r, 0, 10);
    for (int k = 0; k < 6; k++) {
        v[C_LATCNT0 + k] = (double)rnd_in(&r, 0, k == 5 ? 90000 : 20);
        v[C_LATSUM0 + k] = v[C_LATCNT0 + k] * (double)rnd_in(&r, k == 5 ? 0 : 50, 300);
    }
    v[P_CPU] = (double)rnd_in(&r, 100, 200000) / 100.0;
    v[P_START] = floor(now) - (double)rnd_in(&r, 3600, 864000) + 0.25;
    node_gauges(&r, v, eni_max, ipe);
    struct sim_node *n = &w->nodes[i];
    n->present = 1;
    n->restarted = 0;
}

/* Moves node i to epoch e. old gets its previous values. */
static void node_advance(struct worker *w, uint32_t i, uint64_t e, double now)
{
    const struct opts *o = w->o;
    uint32_t g = w->first + i;
    double *v = &w->vals[(size_t)i * NV];
    struct sim_node *n = &w->nodes[i];
    int eni_max, ipe;
    node_params(o, g, &eni_max, &ipe);
    struct rng r = rng_for(o->seed, g, e, 2);
    n->restarted = 0;
    if (n->present) {
        if (o->churn > 0 && chance(&r, o->churn)) {
            n->present = 0;
            return;
        }
    } else {
        if (!chance(&r, 100.0 / 3))
            return;
        n->present = 1;
        n->restarted = 1;
    }
    if (n->restarted || (o->restart > 0 && chance(&r, o->restart))) {
        n->restarted = 1;
        counters_zero(v);
        v[P_START] = now;
    }
    node_gauges(&r, v, eni_max, ipe);
    node_increments(&r, v);
}

/* ---- listeners ---- */

static void on_new_conn(uv_stream_t *server, int status);

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static int node_listen(struct worker *w, struct sim_node *n)
{
    if (n->listener != NULL)
        return 0;
    uv_tcp_t *l = xmalloc(sizeof *l);
    uv_tcp_init(&w->loop, l);
    l->data = n;
    int rc = uv_tcp_bind(l, (const struct sockaddr *)&n->addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)l, 1024, on_new_conn);
    if (rc != 0 && n->addr.sin_port != 0 && ntohl(n->addr.sin_addr.s_addr) != 0x7f000001) {
        /* Fall back to 127.0.0.1 with a port of the kernel's choosing, kept from now on. */
        uv_close((uv_handle_t *)l, free_handle);
        l = xmalloc(sizeof *l);
        uv_tcp_init(&w->loop, l);
        l->data = n;
        n->addr.sin_addr.s_addr = htonl(0x7f000001);
        n->addr.sin_port = 0;
        rc = uv_tcp_bind(l, (const struct sockaddr *)&n->addr, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)l, 1024, on_new_conn);
        if (rc == 0) {
            int len = sizeof n->addr;
            uv_tcp_getsockname(l, (struct sockaddr *)&n->addr, &len);
        }
    }
    if (rc != 0) {
        fprintf(stderr, "ipamd_sim: worker %u: listen failed: %s\n", w->id, uv_strerror(rc));
        uv_close((uv_handle_t *)l, free_handle);
        return rc;
    }
    n->listener = l;
    return 0;
}

static void node_unlisten(struct sim_node *n)
{
    if (n->listener == NULL)
        return;
    uv_close((uv_handle_t *)n->listener, free_handle);
    n->listener = NULL;
}

static void node_sync_listener(struct worker *w, struct sim_node *n)
{
    if (n->present && n->fault != F_REFUSE)
        node_listen(w, n);
    else
        node_unlisten(n);
}

/* ---- responses ---- */

static void on_write_done(uv_write_t *req, int status)
{
    struct write_req *wr = container_of(req, struct write_req, req);
    struct sim_conn *c = wr->c;
    if (c->state != SC_CLOSING && (status != 0 || wr->close_after))
        conn_close(c, 0);
    free(wr);
}

/* Writes bufs; what the socket does not take now is copied and queued. */
static void send_bufs(struct sim_conn *c, uv_buf_t *bufs, unsigned nbufs, int close_after, int copy)
{
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n == (int)total) {
        if (close_after)
            conn_close(c, 0);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c, 0);
        return;
    }
    size_t sent = n > 0 ? (size_t)n : 0;
    /* skip what was sent */
    unsigned first = 0;
    while (first < nbufs && sent >= bufs[first].len) {
        sent -= bufs[first].len;
        first++;
    }
    bufs[first].base += sent;
    bufs[first].len -= sent;
    struct write_req *wr;
    int rc;
    if (copy) {
        size_t rest = 0;
        for (unsigned i = first; i < nbufs; i++)
            rest += bufs[i].len;
        wr = xmalloc(sizeof *wr + rest);
        size_t off = 0;
        for (unsigned i = first; i < nbufs; i++) {
            memcpy(wr->data + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
        wr->c = c;
        wr->close_after = close_after;
        rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
    } else {
        wr = xmalloc(sizeof *wr);
        wr->c = c;
        wr->close_after = close_after;
        rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, bufs + first, nbufs - first, on_write_done);
    }
    if (rc != 0) {
        free(wr);
        conn_close(c, 0);
    }
}

static void on_trickle(uv_timer_t *t)
{
    struct sim_conn *c = container_of(t, struct sim_conn, timer);
    if (c->state != SC_TRICKLE)
        return;
    size_t n = c->slow_len - c->slow_off;
    if (n > 64)
        n = 64;
    uv_buf_t b = uv_buf_init(c->slow + c->slow_off, (unsigned)n);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (rc < 0 && rc != UV_EAGAIN) {
        conn_close(c, 0);
        return;
    }
    if (rc > 0)
        c->slow_off += (size_t)rc;
    if (c->slow_off >= c->slow_len) {
        uv_timer_stop(t);
        c->state = SC_READING;
        idle_push(c->w, c);
    }
}

static unsigned char *gzip_body(const char *body, size_t len, size_t *out_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        exit(3);
    size_t cap = deflateBound(&z, len);
    unsigned char *out = xmalloc(cap);
    z.next_in = (unsigned char *)body;
    z.avail_in = (unsigned)len;
    z.next_out = out;
    z.avail_out = (unsigned)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END)
        exit(3);
    *out_len = cap - z.avail_out;
    deflateEnd(&z);
    return out;
}

static const char ctype_ok[] = "text/plain; version=0.0.4; charset=utf-8";

/* A 200 with data[0..len) in chunks of at most chunk bytes; extra header lines before the blank. */
static void send_chunked(struct sim_conn *c, const char *extra, const void *data, size_t len,
                         size_t chunk, int close_after)
{
    char *o = xmalloc(len + (len / chunk + 1) * 16 + 512);
    size_t n = (size_t)snprintf(o, 512,
                                "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%s"
                                "Transfer-Encoding: chunked\r\n%s\r\n",
                                ctype_ok, extra, close_after ? "Connection: close\r\n" : "");
    for (size_t off = 0; off < len; off += chunk) {
        size_t k = len - off < chunk ? len - off : chunk;
        n += (size_t)snprintf(o + n, 16, "%zx\r\n", k);
        memcpy(o + n, (const char *)data + off, k);
        n += k;
        memcpy(o + n, "\r\n", 2);
        n += 2;
    }
    memcpy(o + n, "0\r\n\r\n", 5);
    uv_buf_t b = uv_buf_init(o, (unsigned)(n + 5));
    send_bufs(c, &b, 1, close_after, 1);
    free(o);
}

static void respond(struct sim_conn *c)
{
    struct worker *w = c->w;
    struct sim_node *n = &w->nodes[c->node];
    w->requests++;
    int fault = n->fault;
    int close_after = c->close_after;
    char hdr[512];
    if (strncmp(c->req, "GET /metrics ", 13) != 0 && strncmp(c->req, "GET /metrics?", 13) != 0) {
        static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; "
                                 "charset=utf-8\r\nContent-Length: 19\r\n\r\n404 page not found\n";
        uv_buf_t b = uv_buf_init((char *)nf, sizeof nf - 1);
        send_bufs(c, &b, 1, close_after, 1);
        return;
    }
    switch (fault) {
    case F_STALL:
        c->state = SC_STALLED;
        return;
    case F_500: {
        static const char e[] =
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; "
            "charset=utf-8\r\nContent-Length: 22\r\n\r\ninternal server error\n";
        uv_buf_t b = uv_buf_init((char *)e, sizeof e - 1);
        send_bufs(c, &b, 1, close_after, 1);
        return;
    }
    case F_GARBAGE: {
        static const char g[] = "\x16\x03\x01\x02\x00 this is not HTTP at all\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)g, sizeof g - 1);
        send_bufs(c, &b, 1, 1, 1);
        return;
    }
    case F_OVERSIZE: {
        int hl = snprintf(hdr, sizeof hdr,
                          "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
                          "\r\n%zx\r\n",
                          ctype_ok, w->pad_len);
        uv_buf_t b[3] = {uv_buf_init(hdr, (unsigned)hl), uv_buf_init(w->pad, (unsigned)w->pad_len),
                         uv_buf_init((char *)"\r\n0\r\n\r\n", 7)};
        /* hdr is on the stack: send it on its own (copied if need be), the pad without a copy. */
        send_bufs(c, b, 1, 0, 1);
        if (c->state != SC_CLOSING)
            send_bufs(c, b + 1, 2, close_after, 0);
        return;
    }
    case F_BOMB:
        if (w->bomb == NULL)
            w->bomb = gzip_body(w->pad, w->pad_len, &w->bomb_len);
        send_chunked(c, "Content-Encoding: gzip\r\n", w->bomb, w->bomb_len, 2048, close_after);
        return;
    default:
        break;
    }
    /* Bodies: render after room for the headers. */
    const size_t H = 512;
    char *pre = NULL;
    size_t prelen = 0;
    if (fault == F_BADTEXT) {
        /* A family every correct consumer reads (a skipped family's line may go unchecked). */
        pre = (char *)"awscni_assigned_ip_addresses{fn=\"x\" 1\n";
        prelen = strlen(pre);
    }
    size_t blen = render_body(w, c->node, H + prelen);
    if (prelen)
        memcpy(w->out + H, pre, prelen);
    blen += prelen;
    char *body = w->out + H;
    const char *ct = fault == F_CTYPE ? "text/html; charset=utf-8" : ctype_ok;
    if (((fault == F_NONE || fault == F_CHUNKED) && c->gzip) || fault == F_GZCUT) {
        /* Real ipamD (promhttp) compresses for clients that accept gzip, as Prometheus does, and
         * Go's server chunks a body past 2 KB. */
        if (n->gz_epoch != w->epoch + 1) {
            free(n->gz);
            n->gz = gzip_body(body, blen, &n->gz_len);
            n->gz_epoch = w->epoch + 1;
        }
        send_chunked(c, "Content-Encoding: gzip\r\n", n->gz,
                     fault == F_GZCUT ? n->gz_len / 2 : n->gz_len, 2048, close_after);
        return;
    }
    if (fault == F_CHUNKED) {
        /* Re-frame the body as chunks of 1000 bytes after it in the buffer. */
        size_t need = H + blen * 2 + 4096;
        if (w->out_cap < need) {
            w->out = realloc(w->out, need);
            if (w->out == NULL)
                exit(3);
            w->out_cap = need;
            body = w->out + H;
        }
        char *o = body + blen;
        char *start = o;
        o += snprintf(o, 256,
                      "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n",
                      ct, close_after ? "Connection: close\r\n" : "");
        for (size_t off = 0; off < blen; off += 1000) {
            size_t k = blen - off < 1000 ? blen - off : 1000;
            o += snprintf(o, 16, "%zx\r\n", k);
            memcpy(o, body + off, k);
            o += k;
            memcpy(o, "\r\n", 2);
            o += 2;
        }
        memcpy(o, "0\r\n\r\n", 5);
        o += 5;
        uv_buf_t b = uv_buf_init(start, (unsigned)(o - start));
        send_bufs(c, &b, 1, close_after, 1);
        return;
    }
    int hl;
    if (fault == F_EOFBODY) {
        hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n\r\n", ct);
        close_after = 1;
    } else {
        hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%sContent-Length: %zu\r\n%s\r\n", ct,
                      fault == F_ENCODING ? "Content-Encoding: br\r\n" : "", blen,
                      close_after ? "Connection: close\r\n" : "");
    }
    char *start = body - hl;
    memcpy(start, hdr, (size_t)hl);
    size_t total = (size_t)hl + blen;
    if (fault == F_RESET || fault == F_TRUNCATE) {
        uv_buf_t b = uv_buf_init(start, (unsigned)(hl + blen / 2));
        int rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        (void)rc;
        conn_close(c, fault == F_RESET);
        return;
    }
    if (fault == F_TRICKLE) {
        c->slow = xmalloc(total);
        memcpy(c->slow, start, total);
        c->slow_len = total;
        c->slow_off = 0;
        c->state = SC_TRICKLE;
        if (!c->timer_used) {
            uv_timer_init(&w->loop, &c->timer);
            c->timer.data = c;
            c->timer_used = 1;
            c->pending++;
        }
        uv_timer_start(&c->timer, on_trickle, 0, w->o->trickle_ms);
        return;
    }
    uv_buf_t b = uv_buf_init(start, (unsigned)total);
    send_bufs(c, &b, 1, close_after, 1);
}

static void on_sim_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct sim_conn *c = h->data;
    size_t room = sizeof c->req - c->req_len;
    if (room < 2) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = c->req + c->req_len;
    buf->len = room - 1;
}

static void on_sim_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct sim_conn *c = st->data;
    if (c->state == SC_CLOSING)
        return;
    if (nread < 0 || (nread == 0 && buf->base == NULL)) {
        conn_close(c, 0);
        return;
    }
    if (nread == 0)
        return;
    c->req_len += (size_t)nread;
    c->req[c->req_len] = '\0';
    if (c->state == SC_STALLED || c->state == SC_TRICKLE) {
        c->req_len = 0;
        return;
    }
    for (;;) {
        char *end = strstr(c->req, "\r\n\r\n");
        if (end == NULL) {
            if (c->req_len >= sizeof c->req - 1)
                conn_close(c, 0);
            return;
        }
        idle_remove(c->w, c);
        size_t used = (size_t)(end + 4 - c->req);
        *end = '\0';
        c->close_after = strcasestr(c->req, "\nconnection: close") != NULL;
        const char *ae = strcasestr(c->req, "\naccept-encoding:");
        c->gzip = ae != NULL && memmem(ae, strcspn(ae + 1, "\r\n") + 1, "gzip", 4) != NULL;
        respond(c);
        if (c->state == SC_CLOSING || c->state == SC_STALLED || c->state == SC_TRICKLE)
            return;
        memmove(c->req, c->req + used, c->req_len - used);
        c->req_len -= used;
        c->req[c->req_len] = '\0';
        idle_push(c->w, c);
    }
}

static void on_new_conn(uv_stream_t *server, int status)
{
    struct sim_node *n = server->data;
    struct worker *w = n->w;
    if (status != 0)
        return;
    struct sim_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        exit(3);
    c->w = w;
    c->node = n->idx;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    c->pending = 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->state = SC_READING;
        w->conns_open++;
        conn_close(c, 0);
        return;
    }
    w->conns_open++;
    w->conns_total++;
    c->state = SC_READING;
    idle_push(w, c);
    uv_read_start((uv_stream_t *)&c->tcp, on_sim_alloc, on_sim_read);
}

static void on_sweep(uv_timer_t *t)
{
    struct worker *w = container_of(t, struct worker, sweep);
    uint64_t now = uv_now(&w->loop);
    while (w->idle_head != NULL && w->idle_head->last_ms + w->o->idle_timeout_ms <= now)
        conn_close(w->idle_head, 0);
}

/* ---- truth ---- */

struct sums {
    uint64_t epoch;
    uint32_t present, ok;
    uint64_t requests, conns_open, conns_total, fds;
    double g[NV];
    double inc[NV];
};

static unsigned count_fds(void)
{
    unsigned n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n > 3 ? n - 3 : 0; /* ., .. and the DIR's own fd */
}

static void json_value(FILE *f, double v)
{
    char buf[40];
    size_t n = fmt_value(buf, v);
    fwrite(buf, 1, n, f);
}

/* After the values of epoch e are in place; old holds epoch e-1's values (NULL at epoch 0). */
static void truth_node(struct worker *w, FILE *f, uint32_t i, const double *old, struct sums *s)
{
    const struct plan *p = w->plan;
    struct sim_node *n = &w->nodes[i];
    const double *v = &w->vals[(size_t)i * NV];
    uint32_t g = w->first + i;
    int count_inc = n->ok && (n->prev_ok || n->restarted) && old != NULL;
    if (n->ok) {
        s->ok++;
        for (int k = 0; k < P_START; k++)
            if (p->kind[k] == VG && v[k] >= 0 &&
                !(k >= G_CIDR0 && k < G_CIDR0 + 4 && k - G_CIDR0 >= v[G_ENI_ALLOC]))
                s->g[k] += v[k];
    }
    if (n->present)
        s->present++;
    if (f == NULL) {
        if (count_inc)
            for (int k = C_ADD; k < P_START; k++)
                if (v[k] >= 0)
                    s->inc[k] += n->restarted ? v[k] : v[k] - (old[k] < 0 ? 0 : old[k]);
        return;
    }
    char ip[32];
    inet_ntop(AF_INET, &n->addr.sin_addr, ip, sizeof ip);
    fprintf(f,
            "{\"epoch\":%" PRIu64 ",\"node\":\"node-%06u\",\"addr\":\"%s:%u\",\"present\":%s,"
            "\"fault\":\"%s\",\"ok\":%s,\"prev_ok\":%s,\"restarted\":%s,\"values\":{",
            w->epoch, g, ip, ntohs(n->addr.sin_port), n->present ? "true" : "false",
            fault_names[n->fault], n->ok ? "true" : "false", n->prev_ok ? "true" : "false",
            n->restarted ? "true" : "false");
    int first = 1;
    for (int k = 0; k <= P_START && n->present; k++) {
        if (k > C_LATCNT0 + 5 && k != P_START)
            continue;
        if (v[k] < 0)
            continue;
        char key[128];
        const char *kk = p->key[k];
        if (k >= G_CIDR0 && k < G_CIDR0 + 4) {
            if (k - G_CIDR0 >= v[G_ENI_ALLOC])
                continue;
            cidr_label(key, sizeof key, g, k - G_CIDR0);
            kk = key;
        }
        fputs(first ? "\"" : ",\"", f);
        first = 0;
        for (const char *q = kk; *q; q++) {
            if (*q == '"' || *q == '\\')
                fputc('\\', f);
            fputc(*q, f);
        }
        fputs("\":", f);
        json_value(f, v[k]);
    }
    fputs("},\"increase\":{", f);
    first = 1;
    for (int k = C_ADD; k < P_START && n->present && old != NULL; k++) {
        if (v[k] < 0)
            continue;
        double d = n->restarted ? v[k] : v[k] - (old[k] < 0 ? 0 : old[k]);
        if (count_inc)
            s->inc[k] += d;
        fputs(first ? "\"" : ",\"", f);
        first = 0;
        for (const char *q = p->key[k]; *q; q++) {
            if (*q == '"' || *q == '\\')
                fputc('\\', f);
            fputc(*q, f);
        }
        fputs("\":", f);
        json_value(f, d);
    }
    fputs("}}\n", f);
}

static void apply_faults(struct worker *w)
{
    for (uint32_t i = 0; i < w->count; i++) {
        struct sim_node *n = &w->nodes[i];
        n->fault =
            n->present ? (uint8_t)fault_of(&w->faults, w->o->seed, w->first + i, w->epoch) : F_NONE;
        n->ok = n->present && fault_ok(n->fault);
        node_sync_listener(w, n);
    }
}

static FILE *truth_open(struct worker *w)
{
    if (w->o->truth_dir == NULL)
        return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/epoch-%06" PRIu64 ".nodes.w%03u.jsonl", w->o->truth_dir,
             w->epoch, w->id);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "ipamd_sim: cannot write %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return f;
}

/* Advances every node (unless init) and fills s with the partial sums. */
static void worker_epoch(struct worker *w, int init, struct sums *s)
{
    memset(s, 0, sizeof *s);
    double now = wall_now();
    FILE *f = NULL;
    if (!init)
        w->epoch++;
    f = truth_open(w);
    double old[NV];
    for (uint32_t i = 0; i < w->count; i++) {
        struct sim_node *n = &w->nodes[i];
        if (init) {
            node_init(w, i, now);
        } else {
            n->prev_ok = n->ok;
            memcpy(old, &w->vals[(size_t)i * NV], sizeof old);
            node_advance(w, i, w->epoch, now);
        }
        n->fault =
            n->present ? (uint8_t)fault_of(&w->faults, w->o->seed, w->first + i, w->epoch) : F_NONE;
        n->ok = n->present && fault_ok(n->fault);
        node_sync_listener(w, n);
        truth_node(w, f, i, init ? NULL : old, s);
    }
    if (f != NULL)
        fclose(f);
    s->epoch = w->epoch;
}

static void fill_stats(struct worker *w, struct sums *s)
{
    s->epoch = w->epoch;
    s->requests = w->requests;
    s->conns_open = w->conns_open;
    s->conns_total = w->conns_total;
    s->fds = count_fds();
}

/* The worker's end is non-blocking (uv_poll made it so): wait for it when it is not ready. */
static void wait_fd(int fd, short events)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    poll(&pfd, 1, -1);
}

static int read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            wait_fd(fd, POLLIN);
            continue;
        }
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            wait_fd(fd, POLLOUT);
            continue;
        }
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Parent -> worker: 1 byte type ('A' advance, 'F' faults, 'S' stats, 'Q' quit), 4 bytes length,
 * payload. Worker -> parent: one struct sums. */
static void on_ctl(uv_poll_t *p, int status, int events)
{
    struct worker *w = container_of(p, struct worker, ctl_poll);
    unsigned char type;
    uint32_t len;
    if (status < 0 || read_full(w->ctl_fd, &type, 1) != 0 || read_full(w->ctl_fd, &len, 4) != 0)
        _exit(0); /* the parent is gone */
    char *payload = xmalloc((size_t)len + 1);
    if (len > 0 && read_full(w->ctl_fd, payload, len) != 0)
        _exit(0);
    payload[len] = '\0';
    struct sums s;
    memset(&s, 0, sizeof s);
    if (type == 'A') {
        worker_epoch(w, 0, &s);
    } else if (type == 'F') {
        char err[256];
        if (faults_parse(payload, &w->faults, err, sizeof err) == 0)
            apply_faults(w);
        else
            s.present = UINT32_MAX; /* tells the parent the spec was bad */
    } else if (type == 'Q') {
        _exit(0);
    }
    free(payload);
    fill_stats(w, &s);
    if (write_full(w->ctl_fd, &s, sizeof s) != 0)
        _exit(0);
}

static void worker_main(const struct opts *o, const struct plan *plan, unsigned id, uint32_t first,
                        uint32_t count, int fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    struct worker *w = calloc(1, sizeof *w);
    if (w == NULL)
        exit(3);
    w->o = o;
    w->plan = plan;
    w->id = id;
    w->first = first;
    w->count = count;
    w->ctl_fd = fd;
    uv_loop_init(&w->loop);
    w->nodes = calloc(count ? count : 1, sizeof *w->nodes);
    w->vals = calloc((size_t)(count ? count : 1) * NV, sizeof *w->vals);
    if (w->nodes == NULL || w->vals == NULL)
        exit(3);
    if (o->faults_spec != NULL) {
        char err[256];
        if (faults_parse(o->faults_spec, &w->faults, err, sizeof err) != 0) {
            fprintf(stderr, "ipamd_sim: --faults: %s\n", err);
            exit(2);
        }
    }
    /* The oversize body: comment lines (valid text) up to 6 MiB. */
    w->pad_len = 6u << 20;
    w->pad = xmalloc(w->pad_len);
    for (size_t i = 0; i < w->pad_len; i += 64) {
        memset(w->pad + i, 'x', 64);
        w->pad[i] = '#';
        w->pad[i + 1] = ' ';
        w->pad[i + 63] = '\n';
    }
    for (uint32_t i = 0; i < count; i++) {
        struct sim_node *n = &w->nodes[i];
        n->w = w;
        n->idx = i;
        n->addr.sin_family = AF_INET;
        n->addr.sin_addr.s_addr = htonl(o->base + first + i);
        n->addr.sin_port = htons(o->port);
    }
    struct sums s;
    worker_epoch(w, 1, &s);
    for (uint32_t i = 0; i < count; i++)
        if (w->nodes[i].present && w->nodes[i].listener == NULL && w->nodes[i].fault != F_REFUSE) {
            fprintf(stderr, "ipamd_sim: worker %u: node %u could not listen\n", id, first + i);
            exit(2);
        }
    /* our part of the targets file */
    if (o->targets_out != NULL) {
        char path[4096];
        snprintf(path, sizeof path, "%s.w%03u", o->targets_out, id);
        FILE *f = fopen(path, "w");
        if (f == NULL)
            exit(2);
        for (uint32_t i = 0; i < count; i++) {
            char ip[32];
            inet_ntop(AF_INET, &w->nodes[i].addr.sin_addr, ip, sizeof ip);
            fprintf(f, "node-%06u %s %u\n", first + i, ip, ntohs(w->nodes[i].addr.sin_port));
        }
        fclose(f);
    }
    fill_stats(w, &s);
    if (write_full(fd, &s, sizeof s) != 0)
        _exit(0);
    uv_poll_init(&w->loop, &w->ctl_poll, fd);
    uv_poll_start(&w->ctl_poll, UV_READABLE, on_ctl);
    uv_timer_init(&w->loop, &w->sweep);
    uv_timer_start(&w->sweep, on_sweep, 250, 250);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    _exit(0);
}

/* ---------------------------------------------------------------- parent: control server */

struct parent {
    uv_loop_t loop;
    const struct opts *o;
    const struct plan *plan;
    unsigned nworkers;
    int *fds;
    pid_t *pids;
    uv_tcp_t server;
    uint64_t epoch;
    uv_signal_t sigterm, sigint;
};

struct ctl_conn {
    uv_tcp_t tcp;
    struct parent *p;
    char buf[65536];
    size_t len;
};

static void write_cluster_truth(struct parent *p, const struct sums *tot)
{
    if (p->o->truth_dir == NULL)
        return;
    const struct plan *pl = p->plan;
    char path[4096];
    snprintf(path, sizeof path, "%s/epoch-%06" PRIu64 ".nodes.jsonl", p->o->truth_dir, tot->epoch);
    /* merge the worker parts in order into one file */
    FILE *out = fopen(path, "w");
    if (out == NULL)
        exit(2);
    for (unsigned i = 0; i < p->nworkers; i++) {
        char part[4096];
        snprintf(part, sizeof part, "%s/epoch-%06" PRIu64 ".nodes.w%03u.jsonl", p->o->truth_dir,
                 tot->epoch, i);
        FILE *in = fopen(part, "r");
        if (in == NULL)
            exit(2);
        char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            fwrite(buf, 1, n, out);
        fclose(in);
        unlink(part);
    }
    fclose(out);
    snprintf(path, sizeof path, "%s/epoch-%06" PRIu64 ".json", p->o->truth_dir, tot->epoch);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        exit(2);
    fprintf(f, "{\"epoch\":%" PRIu64 ",\"nodes\":%u,\"present\":%u,\"ok\":%u,\"sum_gauges\":{",
            tot->epoch, p->o->nodes, tot->present, tot->ok);
    int first = 1;
    double cidr = 0;
    for (int k = 0; k < C_ADD; k++) {
        if (k >= G_CIDR0 && k < G_CIDR0 + 4) {
            cidr += tot->g[k];
            continue;
        }
        fprintf(f, "%s\"", first ? "" : ",");
        first = 0;
        for (const char *q = pl->key[k]; *q; q++) {
            if (*q == '"')
                fputc('\\', f);
            fputc(*q, f);
        }
        fputs("\":", f);
        json_value(f, tot->g[k]);
    }
    fputs(",\"awscni_assigned_ip_per_cidr\":", f);
    json_value(f, cidr);
    fputs("},\"sum_increase\":{", f);
    first = 1;
    for (int k = C_ADD; k < P_START; k++) {
        fprintf(f, "%s\"", first ? "" : ",");
        first = 0;
        for (const char *q = pl->key[k]; *q; q++) {
            if (*q == '"')
                fputc('\\', f);
            fputc(*q, f);
        }
        fputs("\":", f);
        json_value(f, tot->inc[k]);
    }
    fputs("}}\n", f);
    fclose(f);
}

/* Sends one message to every worker and adds up their replies. Blocking: the parent has nothing
 * else to do meanwhile. */
static int broadcast(struct parent *p, unsigned char type, const char *payload, uint32_t len,
                     struct sums *tot)
{
    memset(tot, 0, sizeof *tot);
    for (unsigned i = 0; i < p->nworkers; i++) {
        if (write_full(p->fds[i], &type, 1) != 0 || write_full(p->fds[i], &len, 4) != 0 ||
            (len > 0 && write_full(p->fds[i], payload, len) != 0))
            return -1;
    }
    int bad = 0;
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct sums s;
        if (read_full(p->fds[i], &s, sizeof s) != 0)
            return -1;
        if (s.present == UINT32_MAX)
            bad = 1;
        tot->epoch = s.epoch;
        tot->present += s.present;
        tot->ok += s.ok;
        tot->requests += s.requests;
        tot->conns_open += s.conns_open;
        tot->conns_total += s.conns_total;
        tot->fds += s.fds;
        for (int k = 0; k < NV; k++) {
            tot->g[k] += s.g[k];
            tot->inc[k] += s.inc[k];
        }
    }
    return bad ? -2 : 0;
}

static void on_ctl_close(uv_handle_t *h)
{
    free(container_of((uv_tcp_t *)h, struct ctl_conn, tcp));
}

static void parent_quit(struct parent *p)
{
    for (unsigned i = 0; i < p->nworkers; i++)
        kill(p->pids[i], SIGTERM);
    for (unsigned i = 0; i < p->nworkers; i++)
        waitpid(p->pids[i], NULL, 0);
    exit(0);
}

static void ctl_reply(struct ctl_conn *c, int status, const char *body)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status,
                     status == 200   ? "OK"
                     : status == 404 ? "Not Found"
                                     : "Bad Request",
                     strlen(body), body);
    /* small reply on a fresh connection: written at once, blocking if needed */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        uv_stream_set_blocking((uv_stream_t *)&c->tcp, 1);
        write_full(fd, buf, (size_t)n);
    }
    uv_close((uv_handle_t *)&c->tcp, on_ctl_close);
}

static void ctl_handle(struct ctl_conn *c, const char *body, size_t body_len)
{
    struct parent *p = c->p;
    struct sums tot;
    char out[512];
    if (strncmp(c->buf, "POST /advance ", 14) == 0) {
        if (broadcast(p, 'A', NULL, 0, &tot) != 0) {
            ctl_reply(c, 500, "{\"error\":\"worker lost\"}");
            return;
        }
        p->epoch = tot.epoch;
        write_cluster_truth(p, &tot);
        snprintf(out, sizeof out, "{\"epoch\":%" PRIu64 ",\"present\":%u,\"ok\":%u}", tot.epoch,
                 tot.present, tot.ok);
        ctl_reply(c, 200, out);
    } else if (strncmp(c->buf, "POST /faults ", 13) == 0) {
        int rc = broadcast(p, 'F', body, (uint32_t)body_len, &tot);
        ctl_reply(c, rc == 0 ? 200 : 400, rc == 0 ? "{\"ok\":true}" : "{\"error\":\"bad spec\"}");
    } else if (strncmp(c->buf, "GET /stats ", 11) == 0) {
        broadcast(p, 'S', NULL, 0, &tot);
        snprintf(out, sizeof out,
                 "{\"epoch\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"conns_open\":%" PRIu64
                 ",\"conns_total\":%" PRIu64 ",\"fds\":%" PRIu64 "}",
                 p->epoch, tot.requests, tot.conns_open, tot.conns_total, tot.fds);
        ctl_reply(c, 200, out);
    } else if (strncmp(c->buf, "POST /quit ", 11) == 0) {
        ctl_reply(c, 200, "{\"ok\":true}");
        parent_quit(p);
    } else {
        ctl_reply(c, 404, "{\"error\":\"not found\"}");
    }
}

static void on_ctl_alloc(uv_handle_t *h, size_t s, uv_buf_t *buf)
{
    struct ctl_conn *c = container_of((uv_tcp_t *)h, struct ctl_conn, tcp);
    buf->base = c->buf + c->len;
    buf->len = sizeof c->buf - 1 - c->len;
}

static void on_ctl_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct ctl_conn *c = container_of((uv_tcp_t *)st, struct ctl_conn, tcp);
    if (nread < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_ctl_close);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end == NULL) {
        if (c->len >= sizeof c->buf - 1)
            ctl_reply(c, 400, "{\"error\":\"too big\"}");
        return;
    }
    size_t clen = 0;
    char *cl = strcasestr(c->buf, "\ncontent-length:");
    if (cl != NULL && cl < end)
        clen = strtoul(cl + 16, NULL, 10);
    char *body = end + 4;
    size_t have = c->len - (size_t)(body - c->buf);
    if (have < clen)
        return;
    uv_read_stop(st);
    body[clen] = '\0';
    ctl_handle(c, body, clen);
}

static void on_ctl_conn(uv_stream_t *server, int status)
{
    struct parent *p = server->data;
    if (status != 0)
        return;
    struct ctl_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        exit(3);
    c->p = p;
    uv_tcp_init(&p->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_ctl_close);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_ctl_alloc, on_ctl_read);
}

static void on_parent_signal(uv_signal_t *s, int sig)
{
    parent_quit(s->data);
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr, "usage: ipamd_sim --nodes N [--base IP] [--port P] [--workers W] [--seed S]\n"
                    "  [--template FILE] [--faults SPEC] [--truth-dir DIR] [--targets-out FILE]\n"
                    "  [--control IP:PORT] [--idle-timeout-ms MS] [--churn PCT] [--restart PCT]\n"
                    "  [--trickle-ms MS]\n");
    exit(2);
}

static uint64_t num_arg(const char *name, const char *s, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > max) {
        fprintf(stderr, "ipamd_sim: bad %s '%s'\n", name, s);
        exit(2);
    }
    return v;
}

static double pct_arg(const char *name, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 100) {
        fprintf(stderr, "ipamd_sim: bad %s '%s'\n", name, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    struct opts o;
    memset(&o, 0, sizeof o);
    o.base = 0x7f010001; /* 127.1.0.1 */
    o.port = 61678;
    o.seed = 1;
    o.idle_timeout_ms = 5000;
    o.restart = 1;
    o.trickle_ms = 100;
    snprintf(o.control_ip, sizeof o.control_ip, "127.0.0.1");
    o.template_path = NULL; /* builtin_template */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--nodes") == 0)
            o.nodes = (uint32_t)num_arg(a, v, 1000000);
        else if (strcmp(a, "--base") == 0) {
            struct in_addr in;
            if (inet_pton(AF_INET, v, &in) != 1 || (ntohl(in.s_addr) >> 24) != 127) {
                fprintf(stderr, "ipamd_sim: --base must be an address in 127.0.0.0/8\n");
                exit(2);
            }
            o.base = ntohl(in.s_addr);
        } else if (strcmp(a, "--port") == 0)
            o.port = (uint16_t)num_arg(a, v, 65535);
        else if (strcmp(a, "--workers") == 0)
            o.workers = (unsigned)num_arg(a, v, 64);
        else if (strcmp(a, "--seed") == 0)
            o.seed = num_arg(a, v, UINT64_MAX);
        else if (strcmp(a, "--template") == 0)
            o.template_path = v;
        else if (strcmp(a, "--faults") == 0)
            o.faults_spec = v;
        else if (strcmp(a, "--truth-dir") == 0)
            o.truth_dir = v;
        else if (strcmp(a, "--targets-out") == 0)
            o.targets_out = v;
        else if (strcmp(a, "--control") == 0) {
            const char *colon = strrchr(v, ':');
            if (colon == NULL || (size_t)(colon - v) >= sizeof o.control_ip)
                usage();
            snprintf(o.control_ip, sizeof o.control_ip, "%.*s", (int)(colon - v), v);
            o.control_port = (uint16_t)num_arg(a, colon + 1, 65535);
        } else if (strcmp(a, "--idle-timeout-ms") == 0)
            o.idle_timeout_ms = num_arg(a, v, 86400000);
        else if (strcmp(a, "--churn") == 0)
            o.churn = pct_arg(a, v);
        else if (strcmp(a, "--restart") == 0)
            o.restart = pct_arg(a, v);
        else if (strcmp(a, "--trickle-ms") == 0)
            o.trickle_ms = num_arg(a, v, 60000);
        else
            usage();
    }
    if (o.nodes == 0)
        usage();
    if ((uint64_t)o.base + o.nodes > 0x7fffffffu) {
        fprintf(stderr, "ipamd_sim: --base + --nodes leaves 127.0.0.0/8\n");
        exit(2);
    }
    if (o.faults_spec != NULL) {
        struct faults f = {NULL, 0};
        char err[256];
        if (faults_parse(o.faults_spec, &f, err, sizeof err) != 0) {
            fprintf(stderr, "ipamd_sim: --faults: %s\n", err);
            exit(2);
        }
        free(f.v);
    }
    /* Listeners plus connections must fit under the open-file limit of each worker. */
    if (o.workers == 0)
        o.workers = (o.nodes + 7999) / 8000; /* listeners + kept-alive conns < 20000 */
    if (o.workers > o.nodes)
        o.workers = o.nodes;
    struct plan plan;
    plan_build(&plan, o.template_path);
    signal(SIGPIPE, SIG_IGN);

    struct parent p;
    memset(&p, 0, sizeof p);
    p.o = &o;
    p.plan = &plan;
    p.nworkers = o.workers;
    p.fds = calloc(o.workers, sizeof *p.fds);
    p.pids = calloc(o.workers, sizeof *p.pids);
    if (p.fds == NULL || p.pids == NULL)
        exit(3);
    fflush(NULL);
    uint32_t per = o.nodes / o.workers, extra = o.nodes % o.workers, first = 0;
    for (unsigned i = 0; i < o.workers; i++) {
        uint32_t count = per + (i < extra ? 1 : 0);
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            perror("socketpair");
            exit(2);
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(2);
        }
        if (pid == 0) {
            close(sv[0]);
            for (unsigned j = 0; j < i; j++)
                close(p.fds[j]);
            worker_main(&o, &plan, i, first, count, sv[1]);
        }
        close(sv[1]);
        p.fds[i] = sv[0];
        p.pids[i] = pid;
        first += count;
    }
    /* every worker reports its epoch-0 sums once its listeners are up */
    struct sums tot;
    memset(&tot, 0, sizeof tot);
    for (unsigned i = 0; i < o.workers; i++) {
        struct sums s;
        if (read_full(p.fds[i], &s, sizeof s) != 0) {
            fprintf(stderr, "ipamd_sim: worker %u failed to start\n", i);
            for (unsigned j = 0; j < o.workers; j++)
                kill(p.pids[j], SIGKILL);
            exit(2);
        }
        tot.present += s.present;
        tot.ok += s.ok;
        for (int k = 0; k < NV; k++) {
            tot.g[k] += s.g[k];
            tot.inc[k] += s.inc[k];
        }
    }
    write_cluster_truth(&p, &tot);
    if (o.targets_out != NULL) {
        FILE *out = fopen(o.targets_out, "w");
        if (out == NULL)
            exit(2);
        for (unsigned i = 0; i < o.workers; i++) {
            char part[4096];
            snprintf(part, sizeof part, "%s.w%03u", o.targets_out, i);
            FILE *in = fopen(part, "r");
            if (in == NULL)
                exit(2);
            char buf[65536];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, in)) > 0)
                fwrite(buf, 1, n, out);
            fclose(in);
            unlink(part);
        }
        fclose(out);
    }
    uv_loop_init(&p.loop);
    uv_tcp_init(&p.loop, &p.server);
    p.server.data = &p;
    struct sockaddr_in ca;
    if (uv_ip4_addr(o.control_ip, o.control_port, &ca) != 0 ||
        uv_tcp_bind(&p.server, (const struct sockaddr *)&ca, 0) != 0 ||
        uv_listen((uv_stream_t *)&p.server, 16, on_ctl_conn) != 0) {
        fprintf(stderr, "ipamd_sim: cannot listen on control %s:%u\n", o.control_ip,
                o.control_port);
        parent_quit(&p);
    }
    int len = sizeof ca;
    uv_tcp_getsockname(&p.server, (struct sockaddr *)&ca, &len);
    uv_signal_init(&p.loop, &p.sigterm);
    uv_signal_init(&p.loop, &p.sigint);
    p.sigterm.data = p.sigint.data = &p;
    uv_signal_start(&p.sigterm, on_parent_signal, SIGTERM);
    uv_signal_start(&p.sigint, on_parent_signal, SIGINT);
    printf("READY control=%s:%u nodes=%u workers=%u\n", o.control_ip, ntohs(ca.sin_port), o.nodes,
           o.workers);
    fflush(stdout);
    uv_run(&p.loop, UV_RUN_DEFAULT);
    parent_quit(&p);
    return 0;
}
