/* C11 smoke test of include/recsync.h against the static library.
 * Built and run by tests/c/run.sh; exits non-zero on the first failure. */
#include "recsync.h"

#include <stdio.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,     \
              #cond);                                                      \
      failures++;                                                          \
    }                                                                      \
  } while (0)

static recsync_status parse(const char *text, recsync_key *out) {
  return recsync_key_parse((const uint8_t *)text, strlen(text), out);
}

int main(void) {
  static const char key_text[] = "67e55044-10b1-426f-9247-bb680e5fe0c8";
  recsync_key key;
  recsync_key untouched;
  uint8_t buf[RECSYNC_KEY_TEXT_LEN];
  size_t written = 0;
  const char *version = recsync_version();

  CHECK(version != NULL && version[0] != '\0');
  printf("recsync %s\n", version);

  /* Parse, then format back to the same text. */
  CHECK(parse(key_text, &key) == RECSYNC_STATUS_OK);
  CHECK(recsync_key_format(&key, buf, sizeof buf, &written) ==
        RECSYNC_STATUS_OK);
  CHECK(written == RECSYNC_KEY_TEXT_LEN);
  CHECK(memcmp(buf, key_text, RECSYNC_KEY_TEXT_LEN) == 0);
  printf("key %.*s\n", (int)written, (const char *)buf);

  /* Bad input gives its status and leaves the output alone. */
  memset(&untouched, 0xAA, sizeof untouched);
  key = untouched;
  CHECK(parse("not-a-uuid", &key) == RECSYNC_STATUS_INVALID_KEY);
  CHECK(recsync_key_parse((const uint8_t *)"\xff\xfe", 2, &key) ==
        RECSYNC_STATUS_INVALID_UTF8);
  CHECK(recsync_key_parse(NULL, 36, &key) == RECSYNC_STATUS_NULL_POINTER);
  CHECK(memcmp(&key, &untouched, sizeof key) == 0);
  CHECK(parse(key_text, NULL) == RECSYNC_STATUS_NULL_POINTER);

  written = 99;
  CHECK(recsync_key_format(&key, buf, RECSYNC_KEY_TEXT_LEN - 1, &written) ==
        RECSYNC_STATUS_BUFFER_TOO_SMALL);
  CHECK(recsync_key_format(&key, buf, sizeof buf, NULL) ==
        RECSYNC_STATUS_NULL_POINTER);
  CHECK(written == 99);

  /* Every status has a message; an out-of-range one is harmless. */
  CHECK(strcmp(recsync_status_message(RECSYNC_STATUS_OK), "ok") == 0);
  CHECK(strcmp(recsync_status_message(RECSYNC_STATUS_INVALID_KEY),
               "unknown status") != 0);
  CHECK(strcmp(recsync_status_message((recsync_status)0xFFFFFFFFu),
               "unknown status") == 0);

  if (failures != 0) {
    fprintf(stderr, "smoke.c: %d check(s) failed\n", failures);
    return 1;
  }
  return 0;
}
