//! Builds the guest matchers for `wasm32-wasip2`, so that `cargo build` and
//! `cargo test` are all a fresh clone needs.
//!
//! The guests are members of this workspace, built by a nested cargo into a
//! target directory of their own (`target/guests`, so the nested build never
//! waits on the lock of the outer one and stays warm across profiles) with the
//! `guest` profile. `skills` and `text` are embedded in the host binary; the
//! paths of `misbehave` and its variants are handed to the tests.
//!
//! The guests need the `wasm32-wasip2` standard library. It is looked for
//! before anything is compiled for the guests: where it is missing and
//! rustup is there, the script adds it (`rustup target add`); where it
//! cannot, the build stops at once with the command to run, instead of
//! failing minutes later inside the nested build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[(&str, &str)] = &[
    ("matchbox-skills", "matchbox_skills"),
    ("matchbox-text", "matchbox_text"),
    ("matchbox-misbehave", "matchbox_misbehave"),
    ("matchbox-misbehave-info-trap", "matchbox_misbehave_info_trap"),
    ("matchbox-misbehave-info-loop", "matchbox_misbehave_info_loop"),
    ("matchbox-misbehave-info-nonsense", "matchbox_misbehave_info_nonsense"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let target_dir = env::var_os("MATCHBOX_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("guests"));

    for watched in ["guest", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=MATCHBOX_GUEST_TARGET_DIR");

    ensure_guest_target(&workspace);

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for (package, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    // The outer build's flags are for the host target; they must not leak
    // into the guests' build (a `-C target-cpu=native` would break it).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("could not run cargo to build the guest matchers");
    if !status.success() {
        panic!("building the guest matchers failed ({status}); cargo's messages above say why");
    }

    let out_dir = target_dir.join("wasm32-wasip2").join("guest");
    for (package, artifact) in GUESTS {
        let path = out_dir.join(format!("{artifact}.wasm"));
        assert!(path.exists(), "{package} did not produce {}", path.display());
        let var =
            format!("MATCHBOX_GUEST_{}", package.trim_start_matches("matchbox-").replace('-', "_").to_uppercase());
        println!("cargo:rustc-env={var}={}", path_str(&path));
    }
}

const GUEST_TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain that builds the guests has their target's
/// standard library, adding it with rustup when it is missing.
fn ensure_guest_target(workspace: &Path) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let installed = || {
        Command::new(&rustc)
            .args(["--print", "target-libdir", "--target", GUEST_TARGET])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .is_some_and(|dir| has_std(Path::new(&dir)))
    };
    if installed() {
        return;
    }
    // rustup picks the toolchain of rust-toolchain.toml from the workspace
    // (or the one cargo was started with, through RUSTUP_TOOLCHAIN).
    let added = Command::new("rustup").current_dir(workspace).args(["target", "add", GUEST_TARGET]).status();
    match added {
        Ok(status) if status.success() && installed() => {
            println!("cargo:warning=added the {GUEST_TARGET} target with rustup, for the guest matchers");
        }
        Ok(status) => panic!(
            "the guest matchers need the {GUEST_TARGET} target, and `rustup target add {GUEST_TARGET}` failed \
             ({status}); run it yourself, then build again"
        ),
        Err(e) => panic!(
            "the guest matchers need the {GUEST_TARGET} target's standard library, which this toolchain lacks, \
             and rustup could not be run ({e}); install the target for {rustc} (with rustup: \
             `rustup target add {GUEST_TARGET}`), then build again"
        ),
    }
}

/// Whether a target's library directory holds a standard library
/// (`libstd-<hash>.rlib`).
fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the guest target directory's path is not UTF-8")
}
