//! The controller put together: options, listeners, TLS, the background loops, and the
//! files it keeps beside its database (admin credential, backups).

pub(crate) mod admin_file;
pub mod backup;
pub mod connection_guard;
pub mod retention;
pub mod server;
pub(crate) mod tls;
