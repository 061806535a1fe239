//! What every matchbox matcher shares.
//!
//! A matcher's scoring logic is plain Rust over the types in [`model`], so the
//! same code compiles natively (for unit tests and for the native-against-wasm
//! benchmark) and for `wasm32-wasip2`. On wasm the [`export_matcher!`] macro
//! puts the WIT export layer of `matchbox:matcher@0.1.0` on top of a type that
//! implements [`Matcher`]; the conversion between the generated WIT types and
//! the plain ones lives here, once, for every guest.
//!
//! - [`model`]: the contract's records as plain Rust types;
//! - [`check`]: the input checks every matcher applies before scoring;
//! - [`select`]: best-first selection honouring `top_k` and `min_score`;
//! - `wit` (wasm only): the generated bindings and the export glue;
//! - `arena` (wasm only): a bump allocator for one-job instances.

#[cfg(target_arch = "wasm32")]
pub mod arena;
pub mod check;
pub mod model;
pub mod select;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wit;

pub use model::{Candidate, MatchError, MatcherInfo, Options, Posting, Ranking, Skill};

/// A matcher: the two exports of the `matcher` world over plain Rust types.
pub trait Matcher {
    /// Names and describes the matcher.
    fn info() -> MatcherInfo;

    /// Scores `postings` against `candidate` and returns at most
    /// `options.top_k` rankings, best first, none under `options.min_score`.
    fn rank(candidate: Candidate, postings: Vec<Posting>, options: Options) -> Result<Vec<Ranking>, MatchError>;
}

/// Log levels of the contract's `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a line to the host's per-job log (capped by the host). Natively,
/// where there is no host, the line goes to standard error.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wit::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Exports a [`Matcher`] implementation as the component's `matcher` world.
///
/// Use it once, at a guest crate's root: `matchbox_guest_kit::export_matcher!(Skills);`.
/// It expands to nothing when not compiling for wasm.
#[macro_export]
macro_rules! export_matcher {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Export;
            impl $crate::wit::bindings::Guest for Export {
                fn info() -> $crate::wit::bindings::MatcherInfo {
                    $crate::wit::info_to_wit(<$ty as $crate::Matcher>::info())
                }
                fn rank(
                    candidate: $crate::wit::bindings::Candidate,
                    postings: ::std::vec::Vec<$crate::wit::bindings::Posting>,
                    options: $crate::wit::bindings::Options,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::wit::bindings::Ranking>,
                    $crate::wit::bindings::MatchError,
                > {
                    $crate::wit::rank_via::<$ty>(candidate, postings, options)
                }
            }
    $crate::wit::bindings::export!(Export with_types_in $crate::wit::bindings);
        };
    };
}
