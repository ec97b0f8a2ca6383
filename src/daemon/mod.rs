//! The daemon (`stratad`): nydusd-compatible configuration ([`config`], [`args`]), the FUSE
//! filesystem over RAFS images ([`rafsfs`]) and its inodes' paths ([`image_paths`]), the running service and its pseudo mounts
//! ([`service`]), io statistics in nydusd's shapes ([`metrics`]), the HTTP API on a unix
//! socket ([`api`]), the lifecycle ([`run`]) and the FUSE session's workers ([`serving`]). The only module that knows about FUSE
//! sessions and HTTP; `rafs` and `storage` know nothing of either.

pub mod api;
pub mod args;
pub mod config;
pub mod image_paths;
#[macro_use]
pub mod log;
pub mod metrics;
pub mod passthrough;
pub mod rafsfs;
pub mod recorded;
pub mod run;
pub mod service;
pub mod serving;
pub mod splice;
