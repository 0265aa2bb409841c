/* mlorc.h compiles alone as C11 with warnings as errors, and the header's version macros agree
 * with the library it is linked to. The same checks run from C++17 in test_header.cpp. */
#include "mlorc.h"

#include <stdio.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

int main(void) {
    int failures = 0;
    if (MLORC_ABI_VERSION != mlorc_abi_version()) {
        fprintf(stderr, "%s:%d: MLORC_ABI_VERSION is %u, mlorc_abi_version() is %u\n", __FILE__,
                __LINE__, (unsigned)MLORC_ABI_VERSION, (unsigned)mlorc_abi_version());
        failures++;
    }
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", MLORC_VERSION_MAJOR, MLORC_VERSION_MINOR,
             MLORC_VERSION_PATCH);
    const char *version = mlorc_version();
    if (version == NULL || strcmp(version, expected) != 0) {
        fprintf(stderr, "%s:%d: header version %s, mlorc_version() is \"%s\"\n", __FILE__, __LINE__,
                expected, version ? version : "(null)");
        failures++;
    }
    /* The macros expand to integer literals usable in preprocessor conditions. */
#if MLORC_VERSION_MAJOR < 0 || MLORC_ABI_VERSION < 1
#error "version macros out of range"
#endif
    if (failures != 0) return 1;
    printf("test_header (C11): library %s, ABI %u, header " STR(MLORC_VERSION_MAJOR) "." STR(
               MLORC_VERSION_MINOR) "." STR(MLORC_VERSION_PATCH) ": ok\n",
           version, (unsigned)mlorc_abi_version());
    return 0;
}
