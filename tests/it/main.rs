//! One integration test binary (faster to link than one per file).

mod bodies;
mod cli;
mod corpus;
mod daemon;
mod governance;
mod ha;
mod helpers;
mod layout;
mod monitoring;
mod postgres;
mod provisioning;
mod roundtrip;
mod simulated;
mod source;
mod storage;
mod store;
mod sync;
mod vendor;
