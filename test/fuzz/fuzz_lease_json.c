/* Fuzzes the Lease parser of leader election (cmh_leader_lease_parse): an answer of the API server
 * is a Lease or refused, never a mix. An accepted one has a resourceVersion, strings that end
 * inside their fields (a holder no longer than an identity), and a lease duration that is 0 (the
 * follower's own applies) or whole seconds within the bound; a refused one leaves the record
 * zeroed. Parsing is deterministic. */
#include "cmh/k8s/leader.h"
#include "cmh/k8s/leader_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int zeroed(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != '\0')
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cmh_lease_record r, again;
    memset(&r, 0xa5, sizeof r);
    int rc = cmh_leader_lease_parse((const char *)data, size, &r);
    if (rc != 0 && rc != -EPROTO)
        abort();
    if (rc == 0) {
        if (strnlen(r.resource_version, sizeof r.resource_version) == 0 ||
            strnlen(r.resource_version, sizeof r.resource_version) == sizeof r.resource_version ||
            strnlen(r.holder, sizeof r.holder) > 253 ||
            strnlen(r.renew_time, sizeof r.renew_time) == sizeof r.renew_time)
            abort();
        if (r.duration_ms % 1000 != 0 || r.duration_ms > CMH_LEADER_LEASE_MAX_S * 1000ull)
            abort();
        if (r.transitions < 0)
            abort();
    } else if (!zeroed(r.holder, sizeof r.holder) || !zeroed(r.renew_time, sizeof r.renew_time) ||
               !zeroed(r.resource_version, sizeof r.resource_version) || r.duration_ms != 0 ||
               r.transitions != 0) {
        abort();
    }
    memset(&again, 0x5a, sizeof again);
    if (cmh_leader_lease_parse((const char *)data, size, &again) != rc ||
        strcmp(r.holder, again.holder) != 0 || strcmp(r.renew_time, again.renew_time) != 0 ||
        strcmp(r.resource_version, again.resource_version) != 0 ||
        r.duration_ms != again.duration_ms || r.transitions != again.transitions)
        abort();
    return 0;
}
