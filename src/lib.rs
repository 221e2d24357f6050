//! postern: a 2-Step Authentication gateway in front of IMAP, POP3 and SMTP
//! submission servers.
#![forbid(unsafe_code)]

pub mod address;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod epoch;
pub mod gate;
pub mod login_log;
pub mod metrics;
pub mod net;
pub mod notices;
pub mod penalty;
pub mod policy;
pub mod protocol;
pub mod recheck;
pub mod recovery_mail;
pub mod registry;
pub mod rollout;
pub mod secret;
pub mod service_manager;
pub mod session;
pub mod store;
pub mod web;
