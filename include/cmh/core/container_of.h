/* container_of: from a pointer to a member embedded in a struct back to the struct, as uv handles
 * and requests embedded in their owner are recovered in callbacks (STYLE.md, event loop). */
#ifndef CMH_CONTAINER_OF_H
#define CMH_CONTAINER_OF_H

#include <stddef.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#endif
