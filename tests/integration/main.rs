//! The integration tests: one binary, real trees on disk, the real binaries, real SQLite and zstd.

mod boot;
mod cli;
mod config;
mod crash;
mod fidelity;
mod inplace;
mod interactive;
mod kit;
mod props;
mod selection;
mod util;
