//! Who may connect: credentials kept in files (mosquitto-compatible password files).

pub mod acl;
pub mod password;
