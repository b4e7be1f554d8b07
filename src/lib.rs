pub mod domain;
pub mod xml;
pub mod store;
