//! matchbox (work in progress)
pub mod registry;
pub mod runtime;

/// Paths of the guests built for tests only; never embedded.
#[doc(hidden)]
pub mod testing {
    /// The `misbehave` matcher (see `guest/misbehave`).
    pub const MISBEHAVE_WASM: &str = env!("MATCHBOX_GUEST_MISBEHAVE");
}
