/* Fuzzes the two URL gates of the environment that are security checks: the container-credentials
 * host allow-list (cmh_aws_container_url_allowed: AWS_CONTAINER_CREDENTIALS_FULL_URI, whose
 * answer is trusted as credentials) and the AWS endpoint split with its loopback-only plain-http
 * rule (cmh_url_split: AWS_ENDPOINT_URL*, which receives signed requests). The first
 * byte picks the gate; the rest, up to a NUL, is the URL (an environment value). The oracle is
 * libcurl's own URL parser, the one that decides where the request goes: a URL a gate accepts and
 * libcurl can parse has no user information, the scheme the gate judged, and for plain http a
 * host of the allow-list (container: 127.0.0.0/8, ::1, localhost, 169.254.170.2, 169.254.170.23,
 * fd00:ec2::23; endpoint: 127.0.0.0/8, ::1). An accepted split round-trips: scheme, host and path
 * put together give back the URL. A refusal says why. */
#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/aws/creds_parse.h"
#include "cmh/aws/endpoint.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where libcurl would connect for url: 0 with scheme and host (cmh-independent, curl_free them),
 * or -1 when libcurl refuses the URL. A URL with user information aborts: both gates refuse it. */
static int curl_view(const char *url, char **scheme, char **host)
{
    CURLU *u = curl_url();
    if (u == NULL)
        abort();
    int rc = -1;
    *scheme = *host = NULL;
    /* The flags libcurl itself parses CURLOPT_URL with (lib/url.c). */
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) ==
            CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, host, 0) == CURLUE_OK) {
        char *user = NULL, *password = NULL;
        if (curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER ||
            curl_url_get(u, CURLUPART_PASSWORD, &password, 0) != CURLUE_NO_PASSWORD)
            abort();
        rc = 0;
    } else {
        curl_free(*scheme);
        curl_free(*host);
        *scheme = *host = NULL;
    }
    curl_url_cleanup(u);
    return rc;
}

/* host as libcurl reports it ("[::1]" with brackets) is one of the addresses, or localhost. */
static int host_in(const char *host, int loopback_only)
{
    unsigned char a[16];
    if (host[0] == '[') {
        char lit[64];
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']' || n - 2 >= sizeof lit)
            return 0;
        memcpy(lit, host + 1, n - 2);
        lit[n - 2] = '\0';
        unsigned char b[16];
        if (inet_pton(AF_INET6, lit, a) != 1)
            return 0;
        if (inet_pton(AF_INET6, "::1", b) == 1 && memcmp(a, b, 16) == 0)
            return 1;
        return !loopback_only && inet_pton(AF_INET6, "fd00:ec2::23", b) == 1 &&
               memcmp(a, b, 16) == 0;
    }
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127 || (!loopback_only && a[0] == 169 && a[1] == 254 && a[2] == 170 &&
                               (a[3] == 2 || a[3] == 23));
    return !loopback_only && strcasecmp(host, "localhost") == 0;
}

static void container_gate(const char *url)
{
    char why[512];
    why[0] = '\0';
    int ok = cmh_aws_container_url_allowed(url, why, sizeof why);
    if (!ok) {
        if (why[0] == '\0' || memchr(why, '\0', sizeof why) == NULL)
            abort();
        return;
    }
    int https = strncasecmp(url, "https://", 8) == 0;
    if (!https && strncasecmp(url, "http://", 7) != 0)
        abort();
    char *scheme, *host;
    if (curl_view(url, &scheme, &host) != 0)
        return; /* libcurl refuses it: nothing is requested */
    if (strcmp(scheme, https ? "https" : "http") != 0 || host[0] == '\0')
        abort();
    if (!https && !host_in(host, 0))
        abort();
    curl_free(scheme);
    curl_free(host);
}

static void endpoint_gate(const char *url)
{
    char *host = NULL, *path = NULL;
    int allow_http = -1;
    int rc = cmh_url_split(url, &host, &path, &allow_http);
    int https = strncmp(url, "https://", 8) == 0, http = strncmp(url, "http://", 7) == 0;
    if (rc != 0) {
        if ((rc != -EINVAL && rc != -EPROTONOSUPPORT) || allow_http != 0 ||
            (rc == -EPROTONOSUPPORT && !http))
            abort();
        cmh_free(host);
        cmh_free(path);
        return;
    }
    if ((!https && !http) || allow_http != http || host == NULL || path == NULL ||
        host[0] == '\0' || strpbrk(host, "/?@") != NULL || path[0] != '/' ||
        strchr(path, '?') != NULL)
        abort();
    /* The split round-trips: the path is what follows the host, "/" when nothing does. */
    size_t pl = strlen(https ? "https://" : "http://"), hl = strlen(host);
    if (strncmp(url + pl, host, hl) != 0 ||
        strcmp(url + pl + hl, url[pl + hl] == '\0' ? "" : path) != 0 ||
        (url[pl + hl] == '\0' && strcmp(path, "/") != 0))
        abort();
    char *scheme, *chost;
    if (curl_view(url, &scheme, &chost) == 0) {
        if (strcmp(scheme, http ? "http" : "https") != 0 || (http && !host_in(chost, 1)))
            abort();
        curl_free(scheme);
        curl_free(chost);
    }
    cmh_free(host);
    cmh_free(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *url = cmh_strndup((const char *)data + 1, size - 1);
    if (url == NULL)
        return 0;
    if (data[0] % 2 == 0)
        container_gate(url);
    else
        endpoint_gate(url);
    cmh_free(url);
    return 0;
}
