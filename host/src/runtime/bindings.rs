//! Host bindings for the `matcher` world of `wit/matcher.wit`.
//!
//! Exports are async so that a job's Store can yield at every epoch tick (see
//! [`super::Sandbox`]); the one import, `log`, is a plain synchronous host
//! function: it only appends to a capped in-memory buffer.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "matcher",
    exports: { default: async },
    // Jobs travel between hosts as JSON, and the
    // rankings a guest returns are what the API serves: one type for both,
    // described in the OpenAPI document.
    additional_derives: [PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema],
});

pub use self::matchbox::matcher::log::Level;
pub use self::matchbox::matcher::types::Skill;
