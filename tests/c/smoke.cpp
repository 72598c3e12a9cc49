// C++17 smoke test of include/recsync.h against the static library.
// Built and run by tests/c/run.sh; exits non-zero on any failure.
#include "recsync.h"

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace {

int failures = 0;

void check(bool ok, const char *what, int line) {
  if (!ok) {
    std::fprintf(stderr, "smoke.cpp:%d: check failed: %s\n", line, what);
    ++failures;
  }
}

#define CHECK(cond) check((cond), #cond, __LINE__)

recsync_status parse(std::string_view text, recsync_key *out) {
  return recsync_key_parse(reinterpret_cast<const std::uint8_t *>(text.data()),
                           text.size(), out);
}

}  // namespace

int main() {
  constexpr std::string_view key_text = "67E55044-10B1-426F-9247-BB680E5FE0C8";
  constexpr std::string_view lower = "67e55044-10b1-426f-9247-bb680e5fe0c8";

  const char *version = recsync_version();
  CHECK(version != nullptr && std::strlen(version) > 0);
  std::printf("recsync %s\n", version);

  // Parse (upper case is accepted), then format as lower-case hyphenated.
  recsync_key key{};
  CHECK(parse(key_text, &key) == RECSYNC_STATUS_OK);
  std::array<std::uint8_t, RECSYNC_KEY_TEXT_LEN + 4> buf{};
  std::size_t written = 0;
  CHECK(recsync_key_format(&key, buf.data(), buf.size(), &written) ==
        RECSYNC_STATUS_OK);
  const std::string_view formatted(reinterpret_cast<const char *>(buf.data()),
                                   written);
  CHECK(formatted == lower);

  // Bad input: its own status, output untouched.
  const recsync_key before = key;
  CHECK(parse("67e55044-10b1-426f-9247-bb680e5fe0cg", &key) ==
        RECSYNC_STATUS_INVALID_KEY);
  CHECK(parse("", &key) == RECSYNC_STATUS_INVALID_KEY);
  CHECK(std::memcmp(&key, &before, sizeof key) == 0);
  CHECK(recsync_key_format(nullptr, buf.data(), buf.size(), &written) ==
        RECSYNC_STATUS_NULL_POINTER);

  const std::string_view message =
      recsync_status_message(RECSYNC_STATUS_INVALID_KEY);
  CHECK(!message.empty() && message != "unknown status");

  if (failures != 0) {
    std::fprintf(stderr, "smoke.cpp: %d check(s) failed\n", failures);
    return 1;
  }
  return 0;
}
