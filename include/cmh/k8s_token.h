/* The Kubernetes service-account token, shared by discovery and leader election: read and
 * checked from its (projected, rotating) file, and turned into the Authorization header. Pure
 * but for the one small synchronous file read; thread: any. */
#ifndef CMH_K8S_TOKEN_H
#define CMH_K8S_TOKEN_H

#include <stddef.h>

/* Longest token accepted. */
#define CMH_K8S_TOKEN_MAX (64 * 1024)

/* Reads the token in file (trailing blanks trimmed) into *out (owned by the caller). Returns 0,
 * or -errno / -EINVAL (empty, too long, holds a line break) with a sentence for the log in why. */
int cmh_k8s_token_read(const char *file, char **out, char *why, size_t whylen);

/* "Authorization: Bearer <token>", owned by the caller; NULL when out of memory. */
char *cmh_k8s_bearer_header(const char *token);

#endif
