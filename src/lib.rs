pub mod domain;
pub mod xml;
