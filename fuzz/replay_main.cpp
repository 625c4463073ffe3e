// Runs a fuzz target over files, without libFuzzer: CTest replays the committed seed inputs
// (fuzz/corpus/<target>/) through each target in the normal GCC build, so the targets keep
// compiling and every seed keeps passing their checks. A finding from scripts/fuzz.sh goes
// into the corpus with its fix.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
    std::vector<std::filesystem::path> files;
    for (int i = 1; i < argc; ++i) {
        const std::filesystem::path p{argv[i]};
        if (std::filesystem::is_directory(p)) {
            for (const auto& e : std::filesystem::directory_iterator{p}) {
                files.push_back(e.path());
            }
        } else {
            files.push_back(p);
        }
    }
    if (files.empty()) {
        std::fprintf(stderr, "usage: %s FILE_OR_DIRECTORY...: no inputs found\n", argv[0]);
        return 2;
    }
    for (const auto& f : files) {
        std::ifstream in{f, std::ios::binary};
        const std::string data{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
        if (!in.good() && !in.eof()) {
            std::fprintf(stderr, "cannot read %s\n", f.c_str());
            return 2;
        }
        std::fprintf(stderr, "%s (%zu bytes)\n", f.c_str(), data.size());
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
    }
    std::fprintf(stderr, "%zu inputs passed\n", files.size());
    return 0;
}
