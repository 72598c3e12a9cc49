//! recsync-ffi: the C ABI of recsync. Only this crate knows C; the header
//! `include/recsync.h` is generated from this file by cbindgen (see
//! `ffi/cbindgen.toml`) and checked in; `ffi/tests/header.rs` fails when the
//! two disagree.
//!
//! # API conventions
//!
//! Modelled on rustls-ffi, hyper's C API and wasmtime's C API.
//!
//! - **Names.** Every exported item is `recsync_<type>_<verb>` (for example
//!   `recsync_key_parse`); constants are `RECSYNC_<GROUP>_<NAME>`.
//! - **Status codes.** Every fallible call returns a `recsync_status`, a
//!   `uint32_t` typedef with explicitly numbered `RECSYNC_STATUS_*`
//!   constants. It is deliberately not a C enum: a value out of range coming
//!   back from C (a stale header, a cast) is then an ordinary number the
//!   library answers with "unknown status", never undefined behaviour.
//!   Numbers are stable; new statuses get new numbers.
//!   `recsync_status_message` gives a static text for each.
//! - **Outputs only on success.** Results go through out-pointers that are
//!   written only when the call returns `RECSYNC_STATUS_OK`; on any failure
//!   they hold what the caller put there.
//! - **Validate, don't assert.** A NULL pointer, a short buffer or bad text is
//!   reported as a status, never a crash. Only what C cannot tell us (that a
//!   non-NULL pointer really points at `len` readable bytes) is the caller's
//!   promise, stated under each function's "Safety".
//! - **Byte buffers are `(ptr, len)`.** Text going in is not NUL-terminated
//!   and is UTF-8; text going out is written into a caller's buffer with its
//!   length, without a terminating NUL, unless the function says otherwise.
//!   Static strings the library returns (`recsync_version`,
//!   `recsync_status_message`) are NUL-terminated and must not be freed.
//! - **Opaque handles** (from later issues) come in `recsync_<type>_new` /
//!   `recsync_<type>_free` pairs; `free` accepts NULL; memory the library
//!   hands out is released only by the library's own free functions.
//! - **No panic crosses the boundary.** Each exported body runs inside
//!   `guard`, a `catch_unwind` that turns a panic into
//!   `RECSYNC_STATUS_PANIC` (or a fixed fallback for functions that return
//!   no status). The library installs no panic hook, logger or signal
//!   handler in the host.

#![allow(non_camel_case_types)]

use recsync_engine::Key;
use std::ffi::{c_char, CStr};
use std::panic::{self, AssertUnwindSafe};
use std::slice;

/// The result of every fallible call: one of the `RECSYNC_STATUS_*`
/// constants. A fixed-width integer rather than a C enum, so an
/// out-of-range value is harmless.
pub type recsync_status = u32;

/// The call succeeded and its outputs were written.
pub const RECSYNC_STATUS_OK: recsync_status = 0;
/// A required pointer argument was NULL; nothing was written.
pub const RECSYNC_STATUS_NULL_POINTER: recsync_status = 1;
/// The library panicked (a bug in recsync); the call had no effect that can
/// be relied on and its outputs were not written.
pub const RECSYNC_STATUS_PANIC: recsync_status = 2;
/// Text input was not valid UTF-8.
pub const RECSYNC_STATUS_INVALID_UTF8: recsync_status = 3;
/// Key text was not a UUID.
pub const RECSYNC_STATUS_INVALID_KEY: recsync_status = 4;
/// The caller's output buffer is too small; nothing was written.
pub const RECSYNC_STATUS_BUFFER_TOO_SMALL: recsync_status = 5;

/// The length in bytes of a key's text as `recsync_key_format` writes it:
/// the 36-character hyphenated UUID form, without a NUL.
pub const RECSYNC_KEY_TEXT_LEN: usize = 36;

/// The longest key text `recsync_key_parse` reads: the `urn:uuid:` form.
/// Longer input is refused before it is looked at.
const KEY_TEXT_LEN_MAX: usize = 45;

/// An object key: a UUID as its 16 bytes, in the order of its text form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct recsync_key {
    pub bytes: [u8; 16],
}

impl From<Key> for recsync_key {
    fn from(key: Key) -> Self {
        Self {
            bytes: *key.as_bytes(),
        }
    }
}

impl From<recsync_key> for Key {
    fn from(key: recsync_key) -> Self {
        Key::from_bytes(key.bytes)
    }
}

/// Runs `body`, turning a panic into `fallback`, so no unwind ever reaches C.
///
/// The body is asserted unwind-safe: after a panic nothing it touched is
/// looked at again, only `fallback` is returned.
fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The version of the recsync library, as a static NUL-terminated string
/// (for example "0.1.0"). Never NULL; must not be freed.
#[no_mangle]
pub extern "C" fn recsync_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard(c"unknown".as_ptr(), || VERSION.as_ptr().cast())
}

/// A static, NUL-terminated English description of `status`; "unknown
/// status" for a value that is not one of the `RECSYNC_STATUS_*` constants.
/// Never NULL; must not be freed.
#[no_mangle]
pub extern "C" fn recsync_status_message(status: recsync_status) -> *const c_char {
    guard(c"unknown status".as_ptr(), || {
        status_message(status).as_ptr()
    })
}

fn status_message(status: recsync_status) -> &'static CStr {
    match status {
        RECSYNC_STATUS_OK => c"ok",
        RECSYNC_STATUS_NULL_POINTER => c"a required pointer argument was NULL",
        RECSYNC_STATUS_PANIC => c"internal error: the recsync library panicked",
        RECSYNC_STATUS_INVALID_UTF8 => c"text is not valid UTF-8",
        RECSYNC_STATUS_INVALID_KEY => c"key is not a UUID",
        RECSYNC_STATUS_BUFFER_TOO_SMALL => c"output buffer is too small",
        _ => c"unknown status",
    }
}

/// Parses a key from the `len` bytes of UTF-8 text at `text` (no NUL
/// needed) and writes it to `*out`.
///
/// Accepts the UUID forms: hyphenated (`67e55044-10b1-426f-9247-bb680e5fe0c8`),
/// 32 hex digits, braced (`{...}`) and `urn:uuid:...`, in either case.
///
/// Returns `RECSYNC_STATUS_NULL_POINTER` if `text` or `out` is NULL,
/// `RECSYNC_STATUS_INVALID_UTF8` or `RECSYNC_STATUS_INVALID_KEY` for bad
/// text. `*out` is written only on `RECSYNC_STATUS_OK`.
///
/// # Safety
///
/// If non-NULL, `text` must point at `len` readable bytes and `out` at a
/// writable `recsync_key`; neither is kept after the call returns.
#[no_mangle]
pub unsafe extern "C" fn recsync_key_parse(
    text: *const u8,
    len: usize,
    out: *mut recsync_key,
) -> recsync_status {
    guard(RECSYNC_STATUS_PANIC, || {
        if text.is_null() || out.is_null() {
            return RECSYNC_STATUS_NULL_POINTER;
        }
        if len > KEY_TEXT_LEN_MAX {
            return RECSYNC_STATUS_INVALID_KEY;
        }
        // SAFETY: `text` is non-NULL and the caller promises `len` readable
        // bytes; `len` is at most KEY_TEXT_LEN_MAX, far below isize::MAX.
        let bytes = unsafe { slice::from_raw_parts(text, len) };
        match parse_key(bytes) {
            Ok(key) => {
                // SAFETY: `out` is non-NULL and the caller promises it is
                // writable.
                unsafe { out.write(key.into()) };
                RECSYNC_STATUS_OK
            }
            Err(status) => status,
        }
    })
}

fn parse_key(bytes: &[u8]) -> Result<Key, recsync_status> {
    let text = std::str::from_utf8(bytes).map_err(|_| RECSYNC_STATUS_INVALID_UTF8)?;
    text.parse::<Key>().map_err(|_| RECSYNC_STATUS_INVALID_KEY)
}

/// Writes the text of `*key` into `buf`: the 36-character lowercase
/// hyphenated UUID form (`RECSYNC_KEY_TEXT_LEN` bytes, no NUL), and its
/// length to `*written`.
///
/// Returns `RECSYNC_STATUS_NULL_POINTER` if `key`, `buf` or `written` is
/// NULL, `RECSYNC_STATUS_BUFFER_TOO_SMALL` if `cap` is less than
/// `RECSYNC_KEY_TEXT_LEN`. `buf` and `*written` are written only on
/// `RECSYNC_STATUS_OK`.
///
/// # Safety
///
/// If non-NULL, `key` must point at a readable `recsync_key`, `buf` at `cap`
/// writable bytes and `written` at a writable `size_t`; none is kept after
/// the call returns.
#[no_mangle]
pub unsafe extern "C" fn recsync_key_format(
    key: *const recsync_key,
    buf: *mut u8,
    cap: usize,
    written: *mut usize,
) -> recsync_status {
    guard(RECSYNC_STATUS_PANIC, || {
        if key.is_null() || buf.is_null() || written.is_null() {
            return RECSYNC_STATUS_NULL_POINTER;
        }
        if cap < RECSYNC_KEY_TEXT_LEN {
            return RECSYNC_STATUS_BUFFER_TOO_SMALL;
        }
        // SAFETY: `key` is non-NULL and the caller promises it is readable.
        let key = Key::from(unsafe { key.read() });
        let text = key.to_string();
        assert_eq!(text.len(), RECSYNC_KEY_TEXT_LEN, "hyphenated UUID length");
        // SAFETY: `buf` is non-NULL, the caller promises `cap` writable bytes
        // and `cap >= RECSYNC_KEY_TEXT_LEN == text.len()`; a fresh String
        // cannot overlap the caller's buffer.
        unsafe { buf.copy_from_nonoverlapping(text.as_ptr(), text.len()) };
        // SAFETY: `written` is non-NULL and the caller promises it is writable.
        unsafe { written.write(text.len()) };
        RECSYNC_STATUS_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    const ALL_STATUSES: [recsync_status; 6] = [
        RECSYNC_STATUS_OK,
        RECSYNC_STATUS_NULL_POINTER,
        RECSYNC_STATUS_PANIC,
        RECSYNC_STATUS_INVALID_UTF8,
        RECSYNC_STATUS_INVALID_KEY,
        RECSYNC_STATUS_BUFFER_TOO_SMALL,
    ];

    const TEXT: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    const SENTINEL: recsync_key = recsync_key { bytes: [0xAA; 16] };

    fn message(status: recsync_status) -> &'static str {
        // SAFETY: recsync_status_message returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(recsync_status_message(status)) }
            .to_str()
            .unwrap()
    }

    fn parse(text: &[u8]) -> (recsync_status, recsync_key) {
        let mut out = SENTINEL;
        // SAFETY: a live slice and a live local.
        let status = unsafe { recsync_key_parse(text.as_ptr(), text.len(), &mut out) };
        (status, out)
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: recsync_version returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(recsync_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_status_has_its_own_message() {
        let mut seen = Vec::new();
        for status in ALL_STATUSES {
            let text = message(status);
            assert_ne!(text, "unknown status", "status {status}");
            assert!(!seen.contains(&text), "duplicate message {text:?}");
            seen.push(text);
        }
        assert_eq!(message(RECSYNC_STATUS_OK), "ok");
    }

    #[test]
    fn statuses_are_numbered_densely_from_zero() {
        for (i, status) in ALL_STATUSES.into_iter().enumerate() {
            assert_eq!(status as usize, i);
        }
    }

    #[test]
    fn out_of_range_status_is_unknown() {
        let past_last = ALL_STATUSES.len() as recsync_status;
        for status in [past_last, 1000, u32::MAX] {
            assert_eq!(message(status), "unknown status");
        }
    }

    #[test]
    fn parse_accepts_the_uuid_forms() {
        let expected = recsync_key::from(TEXT.parse::<Key>().unwrap());
        let upper = TEXT.to_uppercase();
        let simple = TEXT.replace('-', "");
        let braced = format!("{{{TEXT}}}");
        let urn = format!("urn:uuid:{TEXT}");
        assert_eq!(urn.len(), KEY_TEXT_LEN_MAX);
        for text in [TEXT, &upper, &simple, &braced, &urn] {
            assert_eq!(parse(text.as_bytes()), (RECSYNC_STATUS_OK, expected));
        }
    }

    #[test]
    fn parse_reads_only_len_bytes() {
        let padded = format!("{TEXT}trailing garbage");
        let (status, key) = parse(&padded.as_bytes()[..TEXT.len()]);
        assert_eq!(status, RECSYNC_STATUS_OK);
        assert_eq!(Key::from(key).to_string(), TEXT);
    }

    #[test]
    fn parse_rejects_bad_text_and_leaves_out_alone() {
        let too_long = format!("{TEXT}{TEXT}");
        let cases: [(&[u8], recsync_status); 6] = [
            (b"", RECSYNC_STATUS_INVALID_KEY),
            (b"not-a-uuid", RECSYNC_STATUS_INVALID_KEY),
            (&TEXT.as_bytes()[..35], RECSYNC_STATUS_INVALID_KEY),
            (
                b"67e55044-10b1-426f-9247-bb680e5fe0cg",
                RECSYNC_STATUS_INVALID_KEY,
            ),
            (too_long.as_bytes(), RECSYNC_STATUS_INVALID_KEY),
            (
                b"67e55044-10b1-426f-9247-bb680e5fe0\xff\xfe",
                RECSYNC_STATUS_INVALID_UTF8,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), (expected, SENTINEL), "{text:?}");
        }
    }

    #[test]
    fn parse_rejects_null_pointers() {
        let mut out = SENTINEL;
        // SAFETY: NULL pointers are checked before any access.
        unsafe {
            assert_eq!(
                recsync_key_parse(ptr::null(), 36, &mut out),
                RECSYNC_STATUS_NULL_POINTER
            );
            assert_eq!(
                recsync_key_parse(TEXT.as_ptr(), TEXT.len(), ptr::null_mut()),
                RECSYNC_STATUS_NULL_POINTER
            );
        }
        assert_eq!(out, SENTINEL);
    }

    #[test]
    fn format_writes_the_hyphenated_form() {
        let (_, key) = parse(TEXT.to_uppercase().as_bytes());
        let mut buf = [b'#'; 40];
        let mut written = 0;
        // SAFETY: live locals; `buf` has 40 writable bytes.
        let status = unsafe { recsync_key_format(&key, buf.as_mut_ptr(), buf.len(), &mut written) };
        assert_eq!(status, RECSYNC_STATUS_OK);
        assert_eq!(written, RECSYNC_KEY_TEXT_LEN);
        assert_eq!(&buf[..written], TEXT.as_bytes());
        assert_eq!(&buf[written..], b"####", "bytes past the text untouched");
    }

    #[test]
    fn format_into_exact_buffer_round_trips() {
        let key = recsync_key {
            bytes: *Key::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210).as_bytes(),
        };
        let mut buf = [0u8; RECSYNC_KEY_TEXT_LEN];
        let mut written = 0;
        // SAFETY: live locals; `buf` has RECSYNC_KEY_TEXT_LEN writable bytes.
        let status = unsafe { recsync_key_format(&key, buf.as_mut_ptr(), buf.len(), &mut written) };
        assert_eq!(status, RECSYNC_STATUS_OK);
        assert_eq!(parse(&buf[..written]), (RECSYNC_STATUS_OK, key));
    }

    #[test]
    fn format_refuses_a_short_buffer_and_writes_nothing() {
        let key = SENTINEL;
        let mut buf = [b'#'; RECSYNC_KEY_TEXT_LEN];
        let mut written = 7;
        for cap in [0, 1, RECSYNC_KEY_TEXT_LEN - 1] {
            // SAFETY: live locals; `cap` never exceeds the buffer's length.
            let status = unsafe { recsync_key_format(&key, buf.as_mut_ptr(), cap, &mut written) };
            assert_eq!(status, RECSYNC_STATUS_BUFFER_TOO_SMALL, "cap {cap}");
        }
        assert_eq!(buf, [b'#'; RECSYNC_KEY_TEXT_LEN]);
        assert_eq!(written, 7);
    }

    #[test]
    fn format_rejects_null_pointers() {
        let key = SENTINEL;
        let mut buf = [b'#'; RECSYNC_KEY_TEXT_LEN];
        let mut written = 7;
        let cap = buf.len();
        // SAFETY: NULL pointers are checked before any access.
        unsafe {
            let statuses = [
                recsync_key_format(ptr::null(), buf.as_mut_ptr(), cap, &mut written),
                recsync_key_format(&key, ptr::null_mut(), cap, &mut written),
                recsync_key_format(&key, buf.as_mut_ptr(), cap, ptr::null_mut()),
            ];
            assert_eq!(statuses, [RECSYNC_STATUS_NULL_POINTER; 3]);
        }
        assert_eq!(buf, [b'#'; RECSYNC_KEY_TEXT_LEN]);
        assert_eq!(written, 7);
    }

    #[test]
    fn guard_turns_a_panic_into_the_fallback() {
        let status = guard(RECSYNC_STATUS_PANIC, || -> recsync_status {
            panic!("boom");
        });
        assert_eq!(status, RECSYNC_STATUS_PANIC);
        assert_eq!(
            guard(RECSYNC_STATUS_PANIC, || RECSYNC_STATUS_OK),
            RECSYNC_STATUS_OK
        );
    }
}
