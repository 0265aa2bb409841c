// mlorc.h compiles alone as C++17 with warnings as errors (extern "C" linkage, no C-only
// constructs), and the version macros agree with the linked library.
#include "mlorc.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

static_assert(std::is_standard_layout<MlorcConfig>::value, "MlorcConfig is a C struct");
static_assert(std::is_standard_layout<MlorcTensorDesc>::value, "MlorcTensorDesc is a C struct");
static_assert(std::is_standard_layout<MlorcStepOptions>::value, "MlorcStepOptions is a C struct");
static_assert(std::is_standard_layout<MlorcBufferInfo>::value, "MlorcBufferInfo is a C struct");
static_assert(sizeof(MlorcStatus) == 4, "MlorcStatus is uint32_t");

int main() {
    int failures = 0;
    if (MLORC_ABI_VERSION != mlorc_abi_version()) {
        std::fprintf(stderr, "%s:%d: MLORC_ABI_VERSION is %u, mlorc_abi_version() is %u\n", __FILE__,
                     __LINE__, static_cast<unsigned>(MLORC_ABI_VERSION), mlorc_abi_version());
        failures++;
    }
    const std::string expected = std::to_string(MLORC_VERSION_MAJOR) + "." +
                                 std::to_string(MLORC_VERSION_MINOR) + "." +
                                 std::to_string(MLORC_VERSION_PATCH);
    const char *version = mlorc_version();
    if (version == nullptr || expected != version) {
        std::fprintf(stderr, "%s:%d: header version %s, mlorc_version() is \"%s\"\n", __FILE__,
                     __LINE__, expected.c_str(), version ? version : "(null)");
        failures++;
    }
    if (failures != 0) return 1;
    std::printf("test_header (C++17): library %s, ABI %u: ok\n", version, mlorc_abi_version());
    return 0;
}
