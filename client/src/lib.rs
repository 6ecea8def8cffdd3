//! ringfs client library (DESIGN §6): one logical file system over the
//! master group and the chunkservers, for tokio programs.
//!
//! - [`Client`]: metadata operations against whichever master leads
//!   ([`masters`]: `NotLeader` hints, bounded backoff, a total deadline),
//!   many requests in flight on a few links per master ([`mux`]);
//! - [`write::Writer`]: sequential writes, pushed along the replica chain,
//!   several pieces in flight, `close` once durable everywhere;
//! - [`read::Reader`]: reads verified block by block against CRC32C, falling
//!   over to other replicas and reporting bad ones;
//! - [`append::Appender`]: record append from many concurrent clients.
//!
//! `conn` is the small blocking connection the tests and tools use; `local`
//! runs a whole cluster on this machine.

pub mod admin;
pub mod append;
pub mod client;
pub mod conn;
pub mod error;
pub mod frames;
pub mod link;
pub mod local;
pub mod locations;
pub mod masters;
pub mod mux;
pub mod read;
mod streams;
pub mod write;

pub use client::{Client, ClientOptions, CreateOptions};
pub use error::{Error, Result};
