// Greedy generation through the C++ wrapper, printed like `layerskip generate`.
//   c++ -std=c++17 examples/cpp/generate.cpp $(pkg-config --cflags --libs target/release/layerskip.pc) -o generate
#include "layerskip.hpp"

#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
    const std::string path = argc > 1 ? argv[1] : "assets/layerskip-pycode-8l";
    const std::string prompt = argc > 2 ? argv[2] : "def fibonacci(n):";
    try {
        layerskip::Model model(path);
        layerskip::Session session(model);
        layerskip::GenerateOptions opts;
        opts.max_new_tokens = argc > 3 ? static_cast<uint32_t>(std::atoi(argv[3])) : 64;
        std::cout << prompt << std::flush;
        session.generate(model.tokenize(prompt), opts, [](int32_t, std::string_view text) {
            std::cout << text << std::flush;
            return true;
        });
        std::cout << "\n";
    } catch (const layerskip::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
