#pragma once
// Runs one SQL statement on a store file from outside the server (a second connection, as
// an operator's sqlite3 shell would): how tests make a table unreadable and readable again,
// and see what the server saved.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <cstdlib>
#include <string>

namespace bb::test {

inline void sqlite_exec(const std::string& db_path, const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
}

// The rows of a table of a store file, read beside the running server (as SQLite lets);
// -1 when the file or the table cannot be read.
inline int sqlite_count(const std::string& db_path, const std::string& table) {
    int rows = -1;
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
        sqlite3_exec(db, ("SELECT count(*) FROM " + table).c_str(), [](void* out, int, char** v, char**) {
            *static_cast<int*>(out) = std::atoi(v[0]);
            return 0;
        }, &rows, nullptr);
    }
    sqlite3_close(db);
    return rows;
}

}  // namespace bb::test
