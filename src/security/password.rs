//! mosquitto-compatible password files: the broker's `password_file`, read as mosquitto 2.0
//! reads it, and written as `mosquitto_passwd` writes it, so one file serves both brokers.
//!
//! # Format
//!
//! One entry a line, `user:hash`, where the hash is one of
//! - `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512 of the password with the salt, `iterations`
//!   rounds, 64 bytes out. What `mosquitto_passwd` writes since 2.0 (101 iterations, a random
//!   12-byte salt).
//! - `$6$salt$hash`: SHA-512 of the password followed by the salt. What 1.6 and earlier wrote.
//!
//! Salt and hash are base64 (standard alphabet, padded, no line breaks), and mosquitto requires
//! the salt to be 12 bytes and the hash 64, for both kinds.
//!
//! # What mosquitto does with each line, and so what [`PasswordFile::parse`] does
//!
//! From mosquitto 2.0's `pwfile__parse` and `unpwd__decode_passwords` (security_default.c),
//! checked against mosquitto 2.0.11:
//! - A line starting with `#` is a comment; a line with no `:` (a blank line too) is ignored.
//!   A `#` after leading blanks does not start a comment. Lines have no length limit.
//! - The line is cut like C's `strtok` at `:`: empty pieces are dropped (`::user:hash` is user
//!   `user`), the first piece is the user and the second the hash; more pieces are ignored.
//!   Blanks (C `isspace`, so `\r` too) around the user and the hash are trimmed.
//! - The hash is cut the same way at `$`, so the leading `$` may be missing or doubled and
//!   pieces after the hash are ignored. The iteration count is read like C's `atoi` (leading
//!   digits, `101abc` is 101) and must be at least 1.
//! - A line that breaks a rule (no hash, an unknown kind, bad base64, a salt that is not 12
//!   bytes, a hash that is not 64, a user or hash over 65,535 bytes) is **skipped**: mosquitto
//!   logs it and starts anyway, and that user cannot log in unless another line gives it a
//!   good entry. We skip the same lines and list them in [`PasswordFile::skipped`] so the
//!   caller can log them. Only a file that cannot be read stops start-up, as in mosquitto.
//! - A user on two good lines: the later line wins (what mosquitto 2.0.11 does; the earlier
//!   line is listed as skipped).
//!
//! One difference: mosquitto hashes the client's password up to its first NUL byte (it keeps
//! it as a C string), so `ab\0cd` passes for `ab`. We hash every byte, so it does not.
//!
//! # Cost of a check
//!
//! A `$7$` check runs PBKDF2 with the entry's iteration count: two SHA-512 compressions per
//! iteration, 50 to 80 µs for the default 101 (0.5 to 0.8 µs an iteration) on the 2-core
//! development machine in a release build, and linear in the count: 10,000 iterations would
//! cost 5 to 8 ms. A debug build is about 50 times slower (3.5 ms at 101). A `$6$` check is
//! one SHA-512, about 0.4 µs. This prints the figures:
//! `cargo test --release --lib security -- --nocapture cost`.
//!
//! The check runs on the caller's thread: a shard that checks a CONNECT blocks for that long,
//! so at the default one core checks 12,000 to 20,000 logins a second, and a file with a
//! large iteration count lowers that in proportion.

#[cfg(test)]
mod tests;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use subtle::ConstantTimeEq;

/// PBKDF2 iterations `mosquitto_passwd` uses unless told otherwise (its `-I`).
pub const ITERATIONS_DEFAULT: u32 = 101;
/// Salt length mosquitto writes and requires when it reads, bytes.
pub const SALT_BYTES: usize = 12;
/// SHA-512 output length: the stored hash, bytes.
pub const HASH_BYTES: usize = 64;
/// Longest user name or hash field mosquitto accepts on a line (and longest password its tool
/// takes), bytes; MQTT strings cannot be longer either.
pub const FIELD_BYTES_MAX: usize = 65_535;
/// Largest iteration count: mosquitto keeps it in a C `int`.
pub const ITERATIONS_MAX: u32 = i32::MAX as u32;

/// A stored password hash: one of mosquitto's two kinds.
#[derive(Clone, PartialEq, Eq)]
pub struct Hash {
    kind: Kind,
    salt: [u8; SALT_BYTES],
    hash: [u8; HASH_BYTES],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes.
    Pbkdf2Sha512 { iterations: u32 },
}

impl Hash {
    /// A new `$7$` hash of `password` with a random salt, as `mosquitto_passwd` makes one.
    /// Fails if `iterations` is 0 or over [`ITERATIONS_MAX`], or the OS has no randomness.
    pub fn new(password: &[u8], iterations: u32) -> Result<Hash, String> {
        if !(1..=ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "the iteration count must be from 1 to {ITERATIONS_MAX}, not {iterations}"
            ));
        }
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt from the OS: {e}"))?;
        Ok(Hash::with_salt(password, iterations, salt))
    }

    /// A `$7$` hash of `password` with the given salt (deterministic, for tests and tools).
    /// Panics if `iterations` is 0.
    pub fn with_salt(password: &[u8], iterations: u32, salt: [u8; SALT_BYTES]) -> Hash {
        assert!(iterations >= 1, "PBKDF2 needs at least one iteration");
        let kind = Kind::Pbkdf2Sha512 { iterations };
        let hash = digest(kind, password, &salt);
        Hash { kind, salt, hash }
    }

    /// Reads the part after `user:` the way mosquitto does (see the module docs); the error
    /// says what is wrong in a few words.
    pub fn parse(field: &[u8]) -> Result<Hash, &'static str> {
        let mut pieces = strtok(field, b'$');
        let kind = match pieces.next() {
            Some(b"6") => Kind::Sha512,
            Some(b"7") => {
                let count = pieces.next().ok_or("no iteration count")?;
                let iterations = atoi_positive(count).ok_or("iteration count is not 1 or more")?;
                Kind::Pbkdf2Sha512 { iterations }
            }
            Some(_) => return Err("hash kind is neither $6$ nor $7$"),
            None => return Err("empty hash"),
        };
        let salt = decode_exact(pieces.next().ok_or("no salt")?)
            .ok_or("salt is not 12 bytes of base64")?;
        let hash = decode_exact(pieces.next().ok_or("no hash after the salt")?)
            .ok_or("hash is not 64 bytes of base64")?;
        Ok(Hash { kind, salt, hash })
    }

    /// True if `password` hashes to this hash. Compares in constant time, so the time taken
    /// says nothing about how much of the hash matched. Costs what the module docs say.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = digest(self.kind, password, &self.salt);
        computed.ct_eq(&self.hash).into()
    }

    /// PBKDF2 iterations, or `None` for a `$6$` hash.
    pub fn iterations(&self) -> Option<u32> {
        match self.kind {
            Kind::Sha512 => None,
            Kind::Pbkdf2Sha512 { iterations } => Some(iterations),
        }
    }
}

/// The file form, `$7$101$salt$hash` or `$6$salt$hash`, exactly as mosquitto writes it.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let salt = BASE64.encode(self.salt);
        let hash = BASE64.encode(self.hash);
        match self.kind {
            Kind::Sha512 => write!(f, "$6${salt}${hash}"),
            Kind::Pbkdf2Sha512 { iterations } => write!(f, "$7${iterations}${salt}${hash}"),
        }
    }
}

/// Shows the kind and iteration count only: a hash is still a secret.
impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hash")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A new `$7$` hash of `password` in file form (`$7$101$salt$hash`), with a random 12-byte
/// salt, as `mosquitto_passwd` writes it. Fails on 0 iterations or no OS randomness.
pub fn hash_password(password: &[u8], iterations: u32) -> Result<String, String> {
    Ok(Hash::new(password, iterations)?.to_string())
}

fn digest(kind: Kind, password: &[u8], salt: &[u8; SALT_BYTES]) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    match kind {
        Kind::Sha512 => {
            let sum = Sha512::new()
                .chain_update(password)
                .chain_update(salt)
                .finalize();
            out.copy_from_slice(&sum);
        }
        Kind::Pbkdf2Sha512 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        }
    }
    out
}

/// A line the broker does not use, and why; the caller logs it with the file's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, in a few words.
    pub reason: String,
}

/// `line 3: user "bob" has no hash after ':'`.
impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The users of a password file and their hashes, read as mosquitto reads the file.
#[derive(Debug, Default)]
pub struct PasswordFile {
    /// User name bytes → (line it came from, hash).
    users: HashMap<Vec<u8>, (usize, Hash)>,
    skipped: Vec<Skipped>,
}

impl PasswordFile {
    /// Reads and parses the file at `path`. Fails only if it cannot be read; lines that break
    /// a rule are skipped (see [`PasswordFile::skipped`]), as mosquitto skips them.
    pub fn load(path: &Path) -> Result<PasswordFile, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
        Ok(PasswordFile::parse_bytes(&bytes))
    }

    /// Parses the text of a password file (see the module docs for the rules).
    pub fn parse(text: &str) -> PasswordFile {
        PasswordFile::parse_bytes(text.as_bytes())
    }

    /// Parses a password file's bytes; user names need not be UTF-8 to be read, though only
    /// UTF-8 ones can match an MQTT user name.
    pub fn parse_bytes(bytes: &[u8]) -> PasswordFile {
        let mut file = PasswordFile::default();
        for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
            match parse_line(line) {
                Line::Ignored => {}
                Line::Entry(user, hash) => file.insert(index + 1, user, hash),
                Line::Bad(reason) => file.skip(index + 1, reason),
            }
        }
        file.skipped.sort_by_key(|s| s.line); // a repeated user adds its earlier line late
        file
    }

    fn insert(&mut self, line: usize, user: &[u8], hash: Hash) {
        if let Some((earlier, _)) = self.users.insert(user.to_vec(), (line, hash)) {
            let name = String::from_utf8_lossy(user);
            self.skip(
                earlier,
                format!("user {name:?} is given again on line {line}, which wins"),
            );
        }
    }

    fn skip(&mut self, line: usize, reason: String) {
        self.skipped.push(Skipped { line, reason });
    }

    /// True if `username` and `password` match an entry. An unknown user costs one default
    /// `$7$` check too, so the time taken does not tell which user names exist.
    pub fn check(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username.as_bytes()) {
            Some((_, hash)) => hash.verify(password),
            None => {
                let kind = Kind::Pbkdf2Sha512 {
                    iterations: ITERATIONS_DEFAULT,
                };
                std::hint::black_box(digest(kind, password, &[0; SALT_BYTES]));
                false
            }
        }
    }

    /// True if the file has a usable entry for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username.as_bytes())
    }

    /// The hash stored for `username`, if any.
    pub fn hash(&self, username: &str) -> Option<&Hash> {
        self.users.get(username.as_bytes()).map(|(_, hash)| hash)
    }

    /// Number of users with a usable entry.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if no line gave a usable entry (mosquitto then refuses every user).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Lines that were skipped, in file order, for the caller to log as mosquitto does.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// What one line of a password file is.
enum Line<'a> {
    /// A comment, a blank line, or another line mosquitto passes over silently.
    Ignored,
    /// `user:hash`, both good.
    Entry(&'a [u8], Hash),
    /// A line mosquitto drops with a warning.
    Bad(String),
}

fn parse_line(line: &[u8]) -> Line<'_> {
    if line.first() == Some(&b'#') || !line.contains(&b':') {
        return Line::Ignored;
    }
    let mut pieces = strtok(line, b':');
    let Some(user) = pieces.next().map(trim_blanks) else {
        return Line::Ignored; // only colons: strtok finds no user, mosquitto adds nothing
    };
    if user.len() > FIELD_BYTES_MAX {
        return Line::Bad(format!("user name is over {FIELD_BYTES_MAX} bytes"));
    }
    let name = String::from_utf8_lossy(user);
    let Some(field) = pieces.next().map(trim_blanks) else {
        return Line::Bad(format!("user {name:?} has no hash after ':'"));
    };
    if field.len() > FIELD_BYTES_MAX {
        return Line::Bad(format!(
            "user {name:?} has a hash over {FIELD_BYTES_MAX} bytes"
        ));
    }
    match Hash::parse(field) {
        Ok(hash) => Line::Entry(user, hash),
        Err(reason) => Line::Bad(format!("user {name:?}: {reason}")),
    }
}

/// The non-empty pieces of `bytes` between `delimiter`s, as C's `strtok` returns them.
fn strtok(bytes: &[u8], delimiter: u8) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(move |&b| b == delimiter)
        .filter(|piece| !piece.is_empty())
}

/// `bytes` without leading and trailing C `isspace` bytes (space, \t, \n, \v, \f, \r).
fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = bytes
        .iter()
        .position(|b| !is_blank(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// C's `atoi` (leading blanks, a sign, then digits up to the first non-digit), kept only if
/// the result is from 1 to [`ITERATIONS_MAX`]; `None` otherwise.
fn atoi_positive(bytes: &[u8]) -> Option<u32> {
    let bytes = &bytes[bytes.len() - trim_blanks(bytes).len()..]; // leading blanks only
    let digits = bytes.strip_prefix(b"+").unwrap_or(bytes);
    let count = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut value: u64 = 0;
    for &digit in &digits[..count] {
        value = value * 10 + u64::from(digit - b'0');
        if value > u64::from(ITERATIONS_MAX) {
            return None;
        }
    }
    u32::try_from(value).ok().filter(|&v| v >= 1)
}

/// Decodes padded standard base64 that must be exactly `N` bytes.
fn decode_exact<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

// ---------------------------------------------------------------------------------------------
// Editing a file, as `mosquitto_passwd` does.

/// A change to a password file, as `mosquitto_passwd` makes them.
#[derive(Debug)]
pub enum Change<'a> {
    /// `-c`: a new file holding only this user's entry, replacing any file there.
    Create(&'a Hash),
    /// Add the user, or replace its entry; the file must exist.
    Set(&'a Hash),
    /// `-D`: remove the user's entry; the file must exist and have the user.
    Delete,
}

/// Applies `change` for `username` to the file at `path` and writes the file back (see
/// [`write_file`]). Comments, blank lines and other users' lines are kept byte for byte.
pub fn update_file(path: &Path, username: &str, change: Change<'_>) -> Result<(), String> {
    check_username(username)?;
    let text = match change {
        Change::Create(hash) => format!("{username}:{hash}\n").into_bytes(),
        Change::Set(hash) => {
            let old = read_for_edit(path)?;
            with_user(&old, username, hash).map_err(|e| in_file(path, &e))?
        }
        Change::Delete => {
            let old = read_for_edit(path)?;
            without_user(&old, username).map_err(|e| in_file(path, &e))?
        }
    };
    write_file(path, &text)
}

fn read_for_edit(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!(
                "password file {} does not exist (-c creates it)",
                path.display()
            )
        }
        _ => format!("cannot read password file {}: {e}", path.display()),
    })
}

fn in_file(path: &Path, what: &str) -> String {
    format!("password file {}: {what}", path.display())
}

/// Refuses a user name that `mosquitto_passwd` refuses (over 65,535 bytes, a control
/// character, a `:`) or that would not read back as written (empty, blanks at either end, a
/// leading `#`, which makes the line a comment).
pub fn check_username(username: &str) -> Result<(), String> {
    let problem = if username.is_empty() {
        "is empty"
    } else if username.len() > FIELD_BYTES_MAX {
        "is over 65535 bytes"
    } else if username.chars().any(char::is_control) {
        "contains a control character"
    } else if username.contains(':') {
        "contains ':', which separates the user from the hash"
    } else if trim_blanks(username.as_bytes()).len() != username.len() {
        "starts or ends with a blank, which mosquitto trims when it reads the file"
    } else if username.starts_with('#') {
        "starts with '#', which makes the line a comment"
    } else {
        return Ok(());
    };
    Err(format!("the user name {username:?} {problem}"))
}

/// `text` with `username`'s entry replaced by `hash` where its first line was (later lines
/// for the same user are dropped), or appended if the user is new.
pub fn with_user(text: &[u8], username: &str, hash: &Hash) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() + 160);
    let mut found = false;
    for (line, user) in lines_for_edit(text)? {
        if user != Some(username.as_bytes()) {
            out.extend_from_slice(line);
        } else if !found {
            out.extend_from_slice(format!("{username}:{hash}\n").as_bytes());
            found = true;
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(format!("{username}:{hash}\n").as_bytes());
    }
    Ok(out)
}

/// `text` without `username`'s lines; an error if it has none (`mosquitto_passwd -D` fails
/// then too).
pub fn without_user(text: &[u8], username: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut found = false;
    for (line, user) in lines_for_edit(text)? {
        if user == Some(username.as_bytes()) {
            found = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    if !found {
        return Err(format!("user {username:?} is not in the file"));
    }
    Ok(out)
}

/// A line of a file being edited: its bytes with the line ending, and its user (`None` for a
/// comment or blank line).
type EditLine<'a> = (&'a [u8], Option<&'a [u8]>);

/// Each line with its ending, and its user (`None` for a comment or blank line). A line that
/// is neither and has no `user:hash` is an error naming it: `mosquitto_passwd` refuses to edit
/// such a file ("Corrupt password file"), and so do we, rather than guess. Unlike it, we keep
/// comments and blank lines, which the broker allows.
fn lines_for_edit(text: &[u8]) -> Result<Vec<EditLine<'_>>, String> {
    let mut lines = Vec::new();
    for (index, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.first() == Some(&b'#') || trim_blanks(line).is_empty() {
            lines.push((line, None));
            continue;
        }
        let mut pieces = strtok(line, b':').map(trim_blanks);
        match (pieces.next(), pieces.next()) {
            (Some(user), Some(hash)) if !user.is_empty() && !hash.is_empty() => {
                lines.push((line, Some(user)));
            }
            _ => {
                return Err(format!(
                    "line {} is not `user:hash`; fix or remove it first",
                    index + 1
                ))
            }
        }
    }
    Ok(lines)
}

/// Writes `bytes` to `path` by way of a temporary file in the same folder, renamed over it, so
/// a crash leaves the old file or the new one, never half of one. A new file is readable by
/// its owner only (0600, as newer `mosquitto_passwd` makes it); a replaced one keeps its mode
/// and, where allowed (as root), its owner and group, since the broker may run as another user
/// than the one editing. A symbolic link is followed, and its target replaced.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("cannot write password file {}: {e}", path.display());
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(failed(e)),
    };
    let name = target
        .file_name()
        .ok_or_else(|| failed(std::io::ErrorKind::InvalidInput.into()))?;
    let temp = target.with_file_name(format!(
        ".{}.ringcast-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let old = std::fs::metadata(&target).ok();
    let result = write_then_rename(&temp, &target, bytes, old.as_ref());
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(failed)
}

fn write_then_rename(
    temp: &Path,
    target: &Path,
    bytes: &[u8],
    old: Option<&std::fs::Metadata>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    file.write_all(bytes)?;
    if let Some(old) = old {
        file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
        // Only root may give a file away; anyone else keeps the file as theirs.
        let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
    }
    file.sync_all()?;
    std::fs::rename(temp, target)
}
