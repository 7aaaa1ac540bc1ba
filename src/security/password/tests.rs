//! Password files checked against references made outside ringcast: lines written by
//! `mosquitto_passwd` 2.0.11, hashes computed with Python's `hashlib`, and the line rules
//! seen in mosquitto 2.0.11 (see the module docs).

use super::*;
use std::time::Instant;

/// Written by `mosquitto_passwd -c -b FILE u p` (mosquitto 2.0.11).
const MOSQUITTO_U_P: &str = concat!(
    "u:$7$101$fBl85QHYS6Djw0S9$",
    "UgX8zwH5ibpwqce0sRJjYjMrjrQHq/6Am2YpUl7e9LvfmHf5Dx/pYXI09CiyPs6KxhcOnXIPUjp1PHwdGSTMHA=="
);
/// Written by `mosquitto_passwd -b FILE keep k` (mosquitto 2.0.11).
const MOSQUITTO_KEEP_K: &str = concat!(
    "keep:$7$101$iu9Ou95fnd7XeNg3$",
    "ci+24gsbaWeaEvgYRLdVBCqW7aY79/L9cYDRaArknWAWAKxu2BVJxhBLB2uMqhqHleT/A+/Zhn4yVqUECfMQ2Q=="
);
/// Salt 01 02 … 0c; hashlib.sha512(b"secret" + salt), base64.
const HASHLIB_SHA512: &str = concat!(
    "$6$AQIDBAUGBwgJCgsM$",
    "XtaqFTpVqKCBusKxL7SramYPpHVSOw+CXtRUIv0PpX6q57MW1a1RUVsLMxkhMn6XOYi3uYMZcGrMAEzcnh9EoA=="
);
/// Same salt; hashlib.pbkdf2_hmac("sha512", b"secret", salt, 1000, 64), base64.
const HASHLIB_PBKDF2_1000: &str = concat!(
    "$7$1000$AQIDBAUGBwgJCgsM$",
    "phZ+4jy6/E2V8Jp4yzDn0+uk3XusNMNCzaF1ETZ1etLITSUISozPh+j3m20pEOk0Ox1mY1WFta+Jza4Bpvamjg=="
);

fn salt_1_to_12() -> [u8; SALT_BYTES] {
    std::array::from_fn(|i| i as u8 + 1)
}

fn skipped_lines(file: &PasswordFile) -> Vec<usize> {
    file.skipped().iter().map(|s| s.line).collect()
}

// ---------------------------------------------------------------------------------------------
// Hashes.

#[test]
fn mosquitto_passwd_lines_check() {
    let file = PasswordFile::parse(&format!("{MOSQUITTO_U_P}\n{MOSQUITTO_KEEP_K}\n"));
    assert!(file.skipped().is_empty(), "{:?}", file.skipped());
    assert_eq!(file.len(), 2);
    assert!(file.check("u", b"p"));
    assert!(file.check("keep", b"k"));
    assert!(!file.check("u", b"k"));
    assert!(!file.check("u", b"p "));
    assert!(!file.check("u", b""));
    assert!(!file.check("U", b"p"));
    assert!(!file.check("nobody", b"p"));
    assert_eq!(file.hash("u").and_then(Hash::iterations), Some(101));
}

#[test]
fn sha512_entry_matches_hashlib() {
    let hash = Hash::parse(HASHLIB_SHA512.as_bytes()).unwrap();
    assert_eq!(hash.iterations(), None);
    assert!(hash.verify(b"secret"));
    assert!(!hash.verify(b"Secret"));
    assert_eq!(hash.to_string(), HASHLIB_SHA512);
}

#[test]
fn pbkdf2_matches_hashlib() {
    let hash = Hash::with_salt(b"secret", 1000, salt_1_to_12());
    assert_eq!(hash.to_string(), HASHLIB_PBKDF2_1000);
    assert_eq!(Hash::parse(HASHLIB_PBKDF2_1000.as_bytes()), Ok(hash));
}

#[test]
fn hash_password_round_trip() {
    let line = hash_password(b"s3cret", ITERATIONS_DEFAULT).unwrap();
    let pieces: Vec<&str> = line.split('$').collect();
    assert_eq!(pieces[..3], ["", "7", "101"], "{line}");
    assert_eq!(
        pieces[3].len(),
        16,
        "12 bytes of salt are 16 base64 characters"
    );
    assert_eq!(
        pieces[4].len(),
        88,
        "64 bytes of hash are 88 characters with padding"
    );
    let file = PasswordFile::parse(&format!("alice:{line}\n"));
    assert!(file.check("alice", b"s3cret"));
    assert!(!file.check("alice", b"s3cret\n"));
    assert!(!file.check("alice", b"wrong"));
}

#[test]
fn salts_are_random() {
    let a = hash_password(b"same", 1).unwrap();
    let b = hash_password(b"same", 1).unwrap();
    assert_ne!(a, b);
}

#[test]
fn iteration_count_bounds() {
    assert!(hash_password(b"p", 0).is_err());
    assert!(hash_password(b"p", ITERATIONS_MAX + 1).is_err());
    let line = hash_password(b"p", 7).unwrap();
    assert!(line.starts_with("$7$7$"), "{line}");
    assert!(PasswordFile::parse(&format!("a:{line}")).check("a", b"p"));
}

#[test]
fn binary_passwords_are_hashed_whole() {
    let hash = Hash::with_salt(b"ab\0cd\xff", 3, salt_1_to_12());
    assert!(hash.verify(b"ab\0cd\xff"));
    assert!(
        !hash.verify(b"ab"),
        "mosquitto would stop at the NUL; we do not"
    );
}

// ---------------------------------------------------------------------------------------------
// Lines, as mosquitto 2.0.11 reads them.

#[test]
fn comments_and_blank_lines_are_ignored() {
    let text = format!("# users\n\n   \n{MOSQUITTO_U_P}\n#u:nothing\n");
    let file = PasswordFile::parse(&text);
    assert_eq!(file.len(), 1);
    assert!(file.skipped().is_empty(), "{:?}", file.skipped());
    assert!(file.check("u", b"p"));
}

#[test]
fn a_hash_after_blanks_is_not_a_comment() {
    // mosquitto: "Invalid password hash type for user # not comment, removing entry."
    let file = PasswordFile::parse("  # not comment:x\n");
    assert_eq!(skipped_lines(&file), [1]);
    assert!(file.skipped()[0].reason.contains("neither $6$ nor $7$"));
}

#[test]
fn malformed_lines_are_skipped_and_the_rest_kept() {
    let hash = &MOSQUITTO_U_P[2..];
    let no_pad = hash.trim_end_matches('=');
    let short_salt = hash.replace("fBl85QHYS6Djw0S9", "fBl85QHYS6Djw0S");
    let text = [
        "plain words",                          // 1: no ':', ignored silently
        "nohash:",                              // 2: no hash
        "kind:$5$AAAA$BBBB",                    // 3: unknown kind
        "zero:$7$0$fBl85QHYS6Djw0S9$x",         // 4: iterations 0
        "letters:$7$abc$fBl85QHYS6Djw0S9$x",    // 5: iterations not a number
        &format!("nopad:{no_pad}"),             // 6: base64 without padding
        &format!("shortsalt:{short_salt}"),     // 7: salt not 12 bytes
        "nosalt:$7$101",                        // 8: no salt
        "nohashpart:$7$101$fBl85QHYS6Djw0S9",   // 9: no hash
        "sixsalt:$6$AQID$XtaqFTpVqKCBusKxL7Sr", // 10: $6$ with a 3-byte salt
        MOSQUITTO_U_P,                          // 11: good
    ]
    .join("\n");
    let file = PasswordFile::parse(&text);
    assert_eq!(skipped_lines(&file), (2..=10).collect::<Vec<_>>());
    assert_eq!(file.len(), 1);
    assert!(file.check("u", b"p"));
    for user in [
        "nohash",
        "kind",
        "zero",
        "letters",
        "nopad",
        "shortsalt",
        "sixsalt",
    ] {
        assert!(!file.contains(user), "{user}");
    }
    let message = file.skipped()[0].to_string();
    assert_eq!(message, "line 2: user \"nohash\" has no hash after ':'");
}

#[test]
fn strtok_quirks_match_mosquitto() {
    // Each of these logged in with password "p" on mosquitto 2.0.11.
    let hash = &MOSQUITTO_U_P[2..];
    let text = [
        format!("nodollar:{}", &hash[1..]),
        format!("junk:{hash}$extra"),
        format!("atoi:{}", hash.replacen("$101$", "$101abc$", 1)),
        format!("  spaced  :  {hash}  "),
        format!("::lead:{hash}"),
        format!("triple:{hash}:more"),
        format!("crlf:{hash}\r"),
        format!("tab\t:\t{hash}\x0b"),
    ]
    .join("\n");
    let file = PasswordFile::parse(&text);
    assert!(file.skipped().is_empty(), "{:?}", file.skipped());
    for user in [
        "nodollar", "junk", "atoi", "spaced", "lead", "triple", "crlf", "tab",
    ] {
        assert!(file.check(user, b"p"), "{user}");
    }
    assert_eq!(file.hash("atoi").and_then(Hash::iterations), Some(101));
}

#[test]
fn the_later_of_two_lines_wins() {
    let first = format!("dup:{}", &MOSQUITTO_KEEP_K[5..]); // password k
    let second = format!("dup:{}", &MOSQUITTO_U_P[2..]); // password p
    let file = PasswordFile::parse(&format!("{first}\n{second}\n"));
    assert!(file.check("dup", b"p"));
    assert!(!file.check("dup", b"k"));
    assert_eq!(skipped_lines(&file), [1]);
    // A later line that is broken leaves the earlier one in force, as in mosquitto.
    let file = PasswordFile::parse(&format!("{first}\ndup:$7$101$broken\n"));
    assert!(file.check("dup", b"k"));
}

#[test]
fn over_long_fields_are_skipped() {
    let long_user = "x".repeat(FIELD_BYTES_MAX + 1);
    let file = PasswordFile::parse(&format!("{long_user}:{}\n", &MOSQUITTO_U_P[2..]));
    assert_eq!(skipped_lines(&file), [1]);
    assert!(file.skipped()[0].reason.contains("over 65535"));
}

#[test]
fn atoi_reads_like_c() {
    assert_eq!(atoi_positive(b"101"), Some(101));
    assert_eq!(atoi_positive(b" +42x"), Some(42));
    assert_eq!(atoi_positive(b"0"), None);
    assert_eq!(atoi_positive(b"-5"), None);
    assert_eq!(atoi_positive(b""), None);
    assert_eq!(atoi_positive(b"2147483647"), Some(ITERATIONS_MAX));
    assert_eq!(atoi_positive(b"2147483648"), None);
    assert_eq!(atoi_positive(b"99999999999999999999999"), None);
}

#[test]
fn non_utf8_bytes_do_not_stop_the_parse() {
    let mut bytes = b"\xff\xfe:$6$x$y\n".to_vec();
    bytes.extend_from_slice(MOSQUITTO_U_P.as_bytes());
    let file = PasswordFile::parse_bytes(&bytes);
    assert!(file.check("u", b"p"));
    assert_eq!(skipped_lines(&file), [1]);
}

#[test]
fn load_names_the_file_when_it_cannot_be_read() {
    let error = PasswordFile::load(Path::new("/nonexistent/ringcast/pw")).unwrap_err();
    assert!(error.starts_with("cannot read password file /nonexistent/ringcast/pw: "));
}

/// Prints what one check costs; asserts nothing about time. The figure in the module docs
/// came from `cargo test --release --lib security -- --nocapture cost`.
#[test]
fn cost_of_a_check() {
    let file = PasswordFile::parse(&format!("{MOSQUITTO_U_P}\nsix:{HASHLIB_SHA512}\n"));
    for (user, password) in [("u", &b"p"[..]), ("six", b"secret"), ("nobody", b"p")] {
        let rounds = 200;
        let start = Instant::now();
        for _ in 0..rounds {
            assert_eq!(file.check(user, password), user != "nobody");
        }
        let each = start.elapsed() / rounds;
        eprintln!("check({user:?}): {each:?} each ({rounds} rounds)");
    }
}

// ---------------------------------------------------------------------------------------------
// Editing.

#[test]
fn usernames_that_would_not_read_back_are_refused() {
    for bad in ["", "a:b", "tab\there", " lead", "trail ", "#hash", "nl\n"] {
        assert!(check_username(bad).is_err(), "{bad:?}");
    }
    assert!(check_username(&"x".repeat(FIELD_BYTES_MAX + 1)).is_err());
    for good in ["alice", "a b", "名前", "a#b", "$SYS"] {
        assert_eq!(check_username(good), Ok(()), "{good:?}");
    }
}

#[test]
fn with_user_replaces_in_place_and_keeps_the_rest() {
    let hash = Hash::with_salt(b"new", 1, salt_1_to_12());
    let text = format!("# header\n\n{MOSQUITTO_KEEP_K}\n{MOSQUITTO_U_P}\nu:$6$old$dup\n# end\n");
    let out = with_user(text.as_bytes(), "u", &hash).unwrap();
    let expected = format!("# header\n\n{MOSQUITTO_KEEP_K}\nu:{hash}\n# end\n");
    assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
    let file = PasswordFile::parse_bytes(&out);
    assert!(file.check("u", b"new") && file.check("keep", b"k"));
}

#[test]
fn with_user_appends_a_new_user() {
    let hash = Hash::with_salt(b"new", 1, salt_1_to_12());
    let out = with_user(MOSQUITTO_U_P.as_bytes(), "v", &hash).unwrap();
    assert_eq!(out, format!("{MOSQUITTO_U_P}\nv:{hash}\n").into_bytes());
    assert_eq!(
        with_user(b"", "v", &hash).unwrap(),
        format!("v:{hash}\n").into_bytes()
    );
}

#[test]
fn without_user_removes_every_line_of_it() {
    let text = format!("{MOSQUITTO_U_P}\n#c\n{MOSQUITTO_KEEP_K}\n{MOSQUITTO_U_P}\n");
    let out = without_user(text.as_bytes(), "u").unwrap();
    assert_eq!(out, format!("#c\n{MOSQUITTO_KEEP_K}\n").into_bytes());
    let error = without_user(&out, "u").unwrap_err();
    assert_eq!(error, "user \"u\" is not in the file");
}

#[test]
fn edits_refuse_a_corrupt_line() {
    let hash = Hash::with_salt(b"new", 1, salt_1_to_12());
    let text = format!("{MOSQUITTO_U_P}\nnot an entry\n");
    let error = with_user(text.as_bytes(), "v", &hash).unwrap_err();
    assert_eq!(error, "line 2 is not `user:hash`; fix or remove it first");
    assert!(without_user(b"a:\n", "a").is_err());
}

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn update_file_creates_sets_and_deletes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("pw-update");
    let path = dir.0.join("passwd");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let hash = Hash::with_salt(b"one", 1, salt_1_to_12());
    let error = update_file(&path, "a", Change::Set(&hash)).unwrap_err();
    assert!(error.contains("does not exist (-c creates it)"), "{error}");

    update_file(&path, "a", Change::Create(&hash)).unwrap();
    assert_eq!(mode(&path), 0o600);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let two = Hash::with_salt(b"two", 1, salt_1_to_12());
    update_file(&path, "b", Change::Set(&two)).unwrap();
    assert_eq!(mode(&path), 0o640, "an edit keeps the file's mode");
    let file = PasswordFile::load(&path).unwrap();
    assert!(file.check("a", b"one") && file.check("b", b"two"));

    update_file(&path, "a", Change::Delete).unwrap();
    let file = PasswordFile::load(&path).unwrap();
    assert!(!file.contains("a") && file.contains("b"));
    assert!(update_file(&path, "a", Change::Delete).is_err());
    assert!(update_file(&path, "bad:name", Change::Set(&two)).is_err());
    let leftovers = std::fs::read_dir(&dir.0).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary file is left behind");
}
