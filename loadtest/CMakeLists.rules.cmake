# Rules engine benchmark (issue 3). Included from loadtest/CMakeLists.txt.
add_executable(bench_rules ${CMAKE_CURRENT_LIST_DIR}/bench_rules.cpp)
target_link_libraries(bench_rules PRIVATE bb_rules benchmark::benchmark)

# Guardrails benchmark (issue 7): cost per KiB of body with every guardrail on.
add_executable(bench_guardrails ${CMAKE_CURRENT_LIST_DIR}/bench_guardrails.cpp)
target_link_libraries(bench_guardrails PRIVATE bb_rules benchmark::benchmark)
