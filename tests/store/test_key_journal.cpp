// The journal of keys of requests sent live (store/key_journal.hpp): what a crash between two
// saves leaves behind, read back oldest first; a file emptied only after a save covered it.
#include "store/key_journal.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using bb::store::key_journal;

namespace {

class journal_test : public ::testing::Test {
protected:
    void SetUp() override {
        static std::atomic<int> n{0};
        dir_ = fs::temp_directory_path() / ("bb_journal_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        base_ = (dir_ / "bb.db").string();
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    std::unique_ptr<key_journal> open(std::vector<key_journal::entry>* replay) {
        std::string error;
        auto j = key_journal::open(base_, replay, &error);
        EXPECT_TRUE(j) << error;
        return j;
    }
    // Closes the journal (as a crash leaves it) and opens it again, reading what it holds.
    void reopen(std::unique_ptr<key_journal>& j, std::vector<key_journal::entry>& replay) {
        j.reset();
        replay.clear();
        j = open(&replay);
    }
    std::uintmax_t size_of(int file) const { return fs::file_size(base_ + ".sent-keys." + std::to_string(file)); }

    fs::path dir_;
    std::string base_;
};

TEST_F(journal_test, what_was_written_comes_back_in_order_after_the_process_is_gone) {
    {
        std::vector<key_journal::entry> replay;
        auto j = open(&replay);
        EXPECT_TRUE(replay.empty());
        ASSERT_TRUE(j->append(11, 1000));
        ASSERT_TRUE(j->append(22, 1001));
        ASSERT_TRUE(j->append(11, key_journal::forgotten, 1000));
        // No save: destroyed as a crash leaves it.
    }
    std::vector<key_journal::entry> replay;
    auto j = open(&replay);
    ASSERT_EQ(replay.size(), 3u);
    EXPECT_EQ(replay[0].digest, 11u);
    EXPECT_EQ(replay[0].wall_ms, 1000);
    EXPECT_EQ(replay[1].digest, 22u);
    EXPECT_EQ(replay[2].wall_ms, key_journal::forgotten);
    EXPECT_EQ(replay[2].undoes_ms, 1000);
    EXPECT_EQ(replay[0].undoes_ms, 0);
    EXPECT_LT(replay[0].seq, replay[1].seq);
    EXPECT_LT(replay[1].seq, replay[2].seq);
    // Written after the reopen: numbered after what was read.
    ASSERT_TRUE(j->append(33, 1002));
    reopen(j, replay);
    ASSERT_EQ(replay.size(), 4u);
    EXPECT_EQ(replay[3].digest, 33u);
}

// A save covers everything written before retire(); only then is that file emptied. Writes
// meanwhile go to the other file and survive the emptying.
TEST_F(journal_test, a_file_is_emptied_only_after_the_save_that_covers_it) {
    std::vector<key_journal::entry> replay;
    auto j = open(&replay);
    ASSERT_TRUE(j->append(1, 100));
    const int first = j->retire();
    ASSERT_TRUE(j->append(2, 200));  // during the save
    EXPECT_GT(size_of(first), 0u);
    ASSERT_TRUE(j->saved(first));
    EXPECT_EQ(size_of(first), 0u);
    EXPECT_GT(size_of(1 - first), 0u);
    reopen(j, replay);
    ASSERT_EQ(replay.size(), 1u);
    EXPECT_EQ(replay[0].digest, 2u);
}

// A save that failed leaves its file as it is; the next retire() does not switch back into it
// (its entries would be mixed with newer ones), and the next save that succeeds empties it.
TEST_F(journal_test, a_failed_save_keeps_its_file_until_a_later_save_covers_it) {
    std::vector<key_journal::entry> replay;
    auto j = open(&replay);
    ASSERT_TRUE(j->append(1, 100));
    const int first = j->retire();  // this save fails: saved() is never called
    ASSERT_TRUE(j->append(2, 200));
    EXPECT_EQ(j->retire(), first) << "no switch back into a file no save covered";
    ASSERT_TRUE(j->append(3, 300));
    ASSERT_TRUE(j->saved(first));
    EXPECT_EQ(size_of(first), 0u);
    reopen(j, replay);
    ASSERT_EQ(replay.size(), 2u) << "written after the first file was retired";
    EXPECT_EQ(replay[0].digest, 2u);
    EXPECT_EQ(replay[1].digest, 3u);
    // Reopened with one file in use and one empty: the next retire switches.
    EXPECT_EQ(j->retire(), 1 - first) << "the file in use is retired, not the empty one";
}

// An entry torn by a crash of the machine (a partial write at the end) or damaged inside is
// skipped; the torn end is cut off so that what is written next is read back.
TEST_F(journal_test, torn_and_damaged_entries_are_skipped) {
    std::string path;
    {
        std::vector<key_journal::entry> replay;
        auto j = open(&replay);
        ASSERT_TRUE(j->append(1, 100));
        ASSERT_TRUE(j->append(2, 200));
        ASSERT_TRUE(j->append(3, 300));
        path = j->path(0);
    }
    {
        std::fstream f{path, std::ios::in | std::ios::out | std::ios::binary};
        f.seekp(40 + 9);  // inside the second entry's digest
        f.put('\x7f');
        f.seekp(0, std::ios::end);
        f.write("\x01\x02\x03\x04\x05", 5);  // a torn sixth of an entry
    }
    std::vector<key_journal::entry> replay;
    auto j = open(&replay);
    ASSERT_EQ(replay.size(), 2u);
    EXPECT_EQ(replay[0].digest, 1u);
    EXPECT_EQ(replay[1].digest, 3u);
    EXPECT_EQ(j->skipped_at_open(), 1u);
    EXPECT_EQ(fs::file_size(path), 120u) << "the torn end is cut off";
    ASSERT_TRUE(j->append(4, 400));
    reopen(j, replay);
    ASSERT_EQ(replay.size(), 3u);
    EXPECT_EQ(replay[2].digest, 4u);
}

TEST_F(journal_test, a_path_that_is_not_a_file_is_refused) {
    fs::create_directories(base_ + ".sent-keys.0");
    std::vector<key_journal::entry> replay;
    std::string error;
    EXPECT_FALSE(key_journal::open(base_, &replay, &error));
    EXPECT_NE(error.find("sent-keys.0"), std::string::npos) << error;
}

}  // namespace
