//! Who may connect and what they may do: mosquitto-compatible password files and ACL files,
//! and the tables each shard checks them against.
//!
//! The files are read once at start and again on SIGHUP. A reload builds new tables off the
//! shards and publishes them with a generation number; each shard keeps its own reference and
//! looks at the generation (one atomic load) when a client connects, so checks never cross
//! cores or take a lock. A file that does not parse keeps the old tables and logs why.

pub mod acl;
pub mod password;

use crate::config::Config;
use acl::Acl;
use password::PasswordFile;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the broker checks clients against.
#[derive(Default)]
pub struct Tables {
    /// Credentials, when a password file is configured.
    pub passwords: Option<PasswordFile>,
    /// Access rules, when an ACL file is configured; without, everything is allowed but
    /// writes to `$SYS`.
    pub acl: Option<Acl>,
    /// Users of the password file who may use the HTTP endpoints.
    pub http_users: Vec<String>,
}

impl Tables {
    /// Reads the configured files.
    pub fn load(files: &Files) -> Result<Tables, String> {
        let passwords = files
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        if let (Some(path), Some(passwords)) = (&files.password_file, &passwords) {
            for skipped in passwords.skipped() {
                tracing::warn!("password file {}: {skipped}, entry ignored", path.display());
            }
        }
        let acl = files.acl_file.as_deref().map(Acl::load).transpose()?;
        Ok(Tables {
            passwords,
            acl,
            http_users: files.http_users.clone(),
        })
    }

    /// Whether a client presenting `username` and `password` may connect on a listener that
    /// does or does not accept anonymous clients. A username with no password file is
    /// accepted as a name only where anonymous clients are.
    pub fn admits(
        &self,
        allow_anonymous: bool,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> bool {
        match (username, &self.passwords) {
            (None, _) => allow_anonymous,
            (Some(user), Some(passwords)) => passwords.check(user, password.unwrap_or_default()),
            (Some(_), None) => allow_anonymous,
        }
    }

    /// Whether an HTTP request with these Basic credentials (None: none sent) may use the
    /// operator endpoints: always without a password file; otherwise a user listed in
    /// `http_users` with the right password.
    pub fn admits_http(&self, credentials: Option<(&str, &[u8])>) -> bool {
        let Some(passwords) = &self.passwords else {
            return true;
        };
        credentials.is_some_and(|(user, password)| {
            self.http_users.iter().any(|u| u == user) && passwords.check(user, password)
        })
    }

    /// Whether a client may publish to `topic` (wills included). `$SYS` (but for bridge
    /// state) and `$share` are refused with or without an ACL file, as mosquitto refuses them.
    pub fn can_write(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        if acl::write_refused_anyway(topic) {
            return false;
        }
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.can_write(username, client_id, topic))
    }
}

/// The files the tables come from.
#[derive(Clone, Debug, Default)]
pub struct Files {
    /// `password_file`.
    pub password_file: Option<PathBuf>,
    /// `acl_file`.
    pub acl_file: Option<PathBuf>,
    /// `http_users`.
    pub http_users: Vec<String>,
}

impl Files {
    /// The files a config names.
    pub fn of(config: &Config) -> Files {
        Files {
            password_file: config.password_file.clone(),
            acl_file: config.acl_file.clone(),
            http_users: config.http_users.clone(),
        }
    }
}

/// The current tables, shared by every shard, replaced as a whole on reload.
pub struct Shared {
    files: Files,
    current: Mutex<Arc<Tables>>,
    generation: AtomicU64,
}

impl Shared {
    /// Loads the tables for the first time; a bad file stops the start.
    pub fn load(files: Files) -> Result<Shared, String> {
        let tables = Tables::load(&files)?;
        Ok(Shared {
            files,
            current: Mutex::new(Arc::new(tables)),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads the files again; on success every shard picks the new tables up at its next
    /// CONNECT. A file that does not parse keeps the old tables; returns why.
    pub fn reload(&self) -> Result<(), String> {
        let tables = Tables::load(&self.files)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The tables of generation `seen`, or newer ones with their generation.
    pub fn refresh(&self, seen: u64, tables: &mut Arc<Tables>) -> u64 {
        let now = self.generation.load(Ordering::Acquire);
        if now != seen {
            *tables = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        now
    }

    /// The current tables.
    pub fn current(&self) -> Arc<Tables> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
