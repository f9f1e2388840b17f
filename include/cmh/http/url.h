/* URLs of the HTTPS clients (AWS endpoints, the Kubernetes API server): the host/path split with
 * its loopback-only plain-http rule. No state; thread: any. */
#ifndef CMH_URL_H
#define CMH_URL_H

/* Splits a URL into the host as sent in Host (*host) and the path (*path, "/" when none); both
 * are cmh_malloc'ed and the caller's to free, also when this fails after setting them.
 * *allow_http is 1 for http:// (only to a loopback literal), else 0. Returns 0; -EINVAL for
 * another scheme, an empty host, userinfo or a query; -EPROTONOSUPPORT for http:// to anything
 * but 127.0.0.0/8 or [::1]; -ENOMEM. */
int cmh_url_split(const char *url, char **host, char **path, int *allow_http);

#endif
