//! ringfs client library (DESIGN §6). The master link, location cache,
//! pipelined writer and verified reader land with the client issue; today the
//! crate holds what the CLI already does with the foundation alone.

pub mod admin;
pub mod conn;
pub mod local;
