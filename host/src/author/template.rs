//! `matchbox new NAME --lang rust|python|js`: a small project that builds a
//! matcher `matchbox check` accepts as it is: the contract, a matcher that
//! ranks by the share of required skills the candidate lists, the build
//! command in a README, and a sample candidate and postings for
//! `matchbox run`.
//!
//! The files are `host/templates/`, embedded in the binary, with `{{name}}`
//! (and `{{crate}}`, the name as Rust spells a library's file) filled in.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::cli::{Failure, exit};

/// The contract, exactly as the host links it.
const WIT: &str = include_str!("../../../wit/matcher.wit");
const CANDIDATE: &str = include_str!("../../templates/candidate.json");
const POSTINGS: &str = include_str!("../../templates/postings.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    /// The language's name, for people.
    pub fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }

    /// The language's own files, by path in the project.
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
                ("README.md", include_str!("../../templates/rust/README.md")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../../templates/python/app.py")),
                ("README.md", include_str!("../../templates/python/README.md")),
            ],
            Lang::Js => &[
                ("matcher.js", include_str!("../../templates/js/matcher.js")),
                ("package.json", include_str!("../../templates/js/package.json")),
                ("README.md", include_str!("../../templates/js/README.md")),
            ],
        }
    }
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The matcher's name, as it will be uploaded: 1 to 64 of a-z, 0-9,
    /// '-' and '_', starting with a letter.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The folder to create [default: ./NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Writes the project; refuses a folder that exists, so nothing of the
/// author's is overwritten.
pub fn new(args: NewArgs) -> Result<PathBuf, Failure> {
    let name = &args.name;
    // The server's name rule, narrowed to what every language's package
    // name takes: no '.', and a letter first.
    let valid = crate::support::names::is_valid_name(name)
        && !name.contains('.')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(Failure::new(
            exit::LOCAL,
            format!("'{name}' cannot name a new matcher: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter"),
        ));
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        return Err(Failure::new(exit::LOCAL, format!("{} already exists; choose another --dir", dir.display())));
    }
    let fill = |text: &str| text.replace("{{name}}", name).replace("{{crate}}", &name.replace('-', "_"));
    let mut files: Vec<(&str, String)> = args.lang.files().iter().map(|(path, text)| (*path, fill(text))).collect();
    files.push(("wit/matcher.wit", WIT.to_string()));
    files.push(("candidate.json", CANDIDATE.to_string()));
    files.push(("postings.json", POSTINGS.to_string()));
    for (path, text) in &files {
        write(&dir.join(path), text)?;
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::new(exit::LOCAL, format!("{}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(path, text).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_has_the_contract_and_its_name_filled_in() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p");
        let made = new(NewArgs { name: "my-matcher".into(), lang: Lang::Rust, dir: Some(dir.clone()) }).unwrap();
        assert_eq!(made, dir);
        assert_eq!(std::fs::read_to_string(dir.join("wit/matcher.wit")).unwrap(), WIT);
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("name: \"my-matcher\".into()"), "{lib}");
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.contains("release/my_matcher.wasm"), "{readme}");
        assert!(!readme.contains("{{"), "{readme}");
        // The folder exists now: a second run refuses, and keeps what is there.
        let again = new(NewArgs { name: "my-matcher".into(), lang: Lang::Js, dir: Some(dir.clone()) }).unwrap_err();
        assert!(again.message.contains("already exists"), "{}", again.message);
        assert!(!dir.join("matcher.js").exists());
    }

    #[test]
    fn names_every_language_cannot_take_are_refused() {
        for bad in ["v1.2", "0day", "Caps", "", "a/b"] {
            let err = new(NewArgs { name: bad.into(), lang: Lang::Python, dir: None }).unwrap_err();
            assert_eq!(err.code, exit::LOCAL);
            assert!(err.message.contains("cannot name a new matcher"), "{bad}: {}", err.message);
        }
    }
}
