// Defines std::ios_base_library_init(), which GCC 13's libstdc++ (GLIBCXX_3.4.32) exports and TorchSharp's
// libLibTorchSharp.so references. Older libstdc++ initialises iostreams through ios_base::Init objects, so
// providing one here gives the same effect. Built and used only where libstdc++ lacks GLIBCXX_3.4.32.
#include <ios>

namespace std {
__attribute__((visibility("default"))) void ios_base_library_init()
{
    static ios_base::Init init;
}
}
