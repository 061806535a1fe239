//! The crate's modules import only from the layers below them.
//!
//! The order is declared here, bottom-up, and is the one `lib.rs` and the
//! README's architecture section describe. The check reads every source file
//! under `host/src`, finds each path that starts at the crate root
//! (`crate::x`, `crate::{x, y}`, or a `super::` that climbs to the root) in
//! its code (comments are skipped), and fails on any that names a module of
//! the same or a higher layer than the file's own. A new top-level module
//! must be given a layer here before the check passes.

use std::path::{Path, PathBuf};

/// Bottom-up. A module may use the modules of the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["support"],
    &["runtime"],
    &["tasks"],
    &["webhooks"],
    &["registry"],
    &["tenants"],
    &["metrics"],
    &["jobs"],
    &["cluster"],
    &["service"],
    &["api"],
    &["config", "cli"],
    &["author"],
    &["lib", "main"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to, and how many `super::` climb
/// from the file to the crate root.
fn module_of(src: &Path, file: &Path) -> (String, usize) {
    let relative: Vec<String> =
        file.strip_prefix(src).unwrap().iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let top = relative[0].trim_end_matches(".rs").to_string();
    let depth = match relative.last().map(String::as_str) {
        // `x.rs` and `x/mod.rs` are the module x itself.
        _ if relative.len() == 1 => 1,
        Some("mod.rs") => relative.len() - 1,
        _ => relative.len(),
    };
    (top, depth)
}

/// The code of a line, without its comment.
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    // A `//` inside a string literal is rare in this crate and would only
    // hide a path, never invent one.
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a line's code names from the crate root.
fn roots_named(line: &str, climbs_to_root: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["crate::", climbs_to_root] {
        let mut rest = line;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let after = &rest[i + prefix.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a::X, b}`: the first ident of each item at depth 1.
                let mut depth = 1;
                let mut at_item = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => at_item = true,
                        c if at_item && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                            out.push(ident_at(&group[j..]).to_string());
                            at_item = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let ident = ident_at(after);
                if !ident.is_empty() {
                    out.push(ident.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn modules_import_only_from_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), src.display());

    let mut upward = Vec::new();
    for file in &files {
        let (module, depth) = module_of(&src, file);
        let Some(own) = layer_of(&module) else {
            panic!("{}: the module '{module}' has no layer; give it one in LAYERS", file.display());
        };
        let climbs_to_root = "super::".repeat(depth);
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for named in roots_named(code(line), &climbs_to_root) {
                if named == module || named == "self" {
                    continue;
                }
                // Names that are not modules of this crate (a root item of
                // lib.rs, such as `testing`) are not layered.
                let Some(theirs) = layer_of(&named) else { continue };
                if theirs >= own {
                    upward.push(format!(
                        "{}:{}: '{module}' uses crate::{named}, which is not below it\n    {}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports that point up or sideways:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_every_form_of_path() {
    assert_eq!(roots_named("use crate::jobs::Job;", "super::"), ["jobs"]);
    assert_eq!(roots_named("use crate::{runtime::X, tasks::{A, B}};", "super::"), ["runtime", "tasks"]);
    assert_eq!(roots_named("let x = crate::service::Matchbox::new();", "super::"), ["service"]);
    assert_eq!(roots_named("use super::super::api::X;", "super::super::"), ["api"]);
    assert!(roots_named("use matchbox_crate::x; use self::a;", "super::").is_empty());
    assert_eq!(code("use crate::a; // crate::b"), "use crate::a; ");
    assert_eq!(code("    //! see [`crate::service`]"), "");
}
