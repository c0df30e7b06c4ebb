//! The integration tests: one binary, real trees on disk, the real binaries, real SQLite and zstd.

mod baremetal;
mod boot;
mod busy;
mod cli;
mod config;
mod crash;
mod damage;
mod export;
mod fidelity;
mod inplace;
mod interactive;
mod kit;
mod large;
mod mount;
mod offsite;
mod package;
mod partial;
mod place;
mod props;
mod refusals;
mod relog;
mod removal;
mod selection;
mod util;
