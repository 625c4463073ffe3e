# Rules engine benchmark (issue 3). Included from loadtest/CMakeLists.txt.
add_executable(bench_rules ${CMAKE_CURRENT_LIST_DIR}/bench_rules.cpp)
target_link_libraries(bench_rules PRIVATE bb_rules benchmark::benchmark)
