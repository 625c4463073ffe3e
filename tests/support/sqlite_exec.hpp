#pragma once
// Runs one SQL statement on a store file from outside the server (a second connection, as
// an operator's sqlite3 shell would): how tests make a table unreadable and readable again.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <string>

namespace bb::test {

inline void sqlite_exec(const std::string& db_path, const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
}

}  // namespace bb::test
