# SQLite store benchmark (issue 5): holds/s with and without group commit.
# Included from loadtest/CMakeLists.txt.
add_executable(bench_store ${CMAKE_CURRENT_LIST_DIR}/bench_store.cpp)
target_link_libraries(bench_store PRIVATE bb_store Threads::Threads)
