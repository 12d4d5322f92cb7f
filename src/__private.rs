//! Items the attribute macros expand to. Not a public API.
