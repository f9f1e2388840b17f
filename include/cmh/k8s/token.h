/* The Kubernetes service-account token, shared by discovery, leader election, proxy scraping and
 * report: read and checked from its (projected, rotating) file, and turned into the Authorization
 * header; struct cmh_k8s_token keeps it between requests. Pure but for the one small synchronous
 * file read; thread: any (one struct per thread). */
#ifndef CMH_K8S_TOKEN_H
#define CMH_K8S_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest token accepted. */
#define CMH_K8S_TOKEN_MAX (64 * 1024)

/* A token kept for requests. It is read when first used, again once max_age_ms old (the kubelet
 * rotates the file well before the token expires) and at the first use after the API server
 * refused it. A failed read keeps the token held, and is tried again at the same moments. */
struct cmh_k8s_token {
    /* read-only */
    char *file;     /* owned; NULL: requests go without a token */
    char *header;   /* "Authorization: Bearer <token>" when token is set */
    uint64_t reads; /* good reads */
    /* private */
    uint64_t max_age_ms;
    char *token;      /* NULL until the first good read */
    uint64_t read_ms; /* loop time of the last read attempt */
    bool tried, refused;
};

/* Sets t up for file (copied; NULL for none). Returns 0 or -ENOMEM (then nothing to free). */
int cmh_k8s_token_init(struct cmh_k8s_token *t, const char *file, uint64_t max_age_ms);

/* Brings t up to date at loop time now_ms. Returns 0 when nothing changed or the token was read
 * for the first time, 1 when a read found a different token (it rotated), or the failed read's
 * negative code with a sentence in why (t keeps what it had). */
int cmh_k8s_token_refresh(struct cmh_k8s_token *t, uint64_t now_ms, char *why, size_t whylen);

/* The API server answered 401 or 403: read the file again at the next refresh. */
static inline void cmh_k8s_token_refused(struct cmh_k8s_token *t)
{
    t->refused = true;
}

/* Frees what t holds; t is then as after a failed init. */
void cmh_k8s_token_free(struct cmh_k8s_token *t);

#endif
