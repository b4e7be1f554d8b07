//! Generated upstream data: a seeded population of students and an XML writer for any schema
//! version. The demo, the benches and the property tests use it; the HTTP simulator of the
//! platform builds on it.

pub mod platform;
pub mod population;
pub mod provisioning;
pub mod render;
pub mod server;

pub use platform::Platform;
pub use population::Population;
pub use render::{render_to_string, DocumentWriter};
