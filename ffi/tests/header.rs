//! The checked-in header `include/recsync.h` must be exactly what the pinned
//! cbindgen generates from this crate's source and `ffi/cbindgen.toml`.
//!
//! To regenerate after changing the C API:
//!
//! ```text
//! RECSYNC_BLESS=1 cargo test -p recsync-ffi --test header
//! ```

use std::path::{Path, PathBuf};

const BLESS_VAR: &str = "RECSYNC_BLESS";

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("../include/recsync.h")
}

fn generate() -> Vec<u8> {
    let config = cbindgen::Config::from_file(crate_dir().join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir())
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut header = Vec::new();
    bindings.write(&mut header);
    header
}

#[test]
fn header_matches_cbindgen() {
    let generated = generate();
    let path = header_path();
    if std::env::var_os(BLESS_VAR).is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/recsync.h");
        eprintln!("{BLESS_VAR}=1: rewrote {}", path.display());
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/recsync.h is stale: it differs from what cbindgen generates \
         from ffi/src/lib.rs and ffi/cbindgen.toml ({}).\n\
         Regenerate it with:\n    \
         {BLESS_VAR}=1 cargo test -p recsync-ffi --test header\n\
         then review and commit the diff.",
        first_difference(&checked_in, &generated),
    );
}

/// Names the first line where the two texts differ, with both versions.
fn first_difference(checked_in: &[u8], generated: &[u8]) -> String {
    let old = String::from_utf8_lossy(checked_in);
    let new = String::from_utf8_lossy(generated);
    let mut old_lines = old.lines();
    let mut new_lines = new.lines();
    for number in 1.. {
        match (old_lines.next(), new_lines.next()) {
            (None, None) => break,
            (a, b) if a == b => continue,
            (a, b) => {
                return format!(
                    "first at line {number}: checked in {:?}, generated {:?}",
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>"),
                )
            }
        }
    }
    "line endings or trailing bytes differ".to_string()
}
