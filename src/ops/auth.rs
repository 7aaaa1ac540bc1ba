//! HTTP Basic credentials (RFC 7617) for the operator endpoints, checked against the same
//! password file as MQTT logins (`Tables::admits_http`).

use super::http::{Request, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The realm browsers show in their login prompt.
pub const REALM: &str = "ringcast";

/// The username and password of a request's `Authorization: Basic ...` header, if it has
/// one that decodes.
pub fn basic_credentials(request: &Request) -> Option<(String, Vec<u8>)> {
    let value = request.header("authorization")?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    // The user-id cannot hold a colon (RFC 7617 §2); the password may.
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The answer to a request without acceptable credentials: 401 with the challenge that
/// makes a browser ask for them.
pub fn challenge() -> Response {
    let mut response = Response::text(401, "credentials required: a user listed in http_users\n");
    response.headers.push((
        "WWW-Authenticate".to_string(),
        format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
    ));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> Request {
        Request {
            headers: vec![("authorization".into(), value.into())],
            ..Request::default()
        }
    }

    #[test]
    fn basic_credentials_decode_and_keep_colons_in_the_password() {
        // "admin:se:cret"
        let request = with_authorization("Basic YWRtaW46c2U6Y3JldA==");
        assert_eq!(
            basic_credentials(&request),
            Some(("admin".to_string(), b"se:cret".to_vec()))
        );
        let lower = with_authorization("basic YWRtaW46c2U6Y3JldA==");
        assert!(basic_credentials(&lower).is_some());
    }

    #[test]
    fn other_schemes_and_bad_base64_are_no_credentials() {
        assert_eq!(basic_credentials(&with_authorization("Bearer abc")), None);
        assert_eq!(basic_credentials(&with_authorization("Basic !!!")), None);
        // "nocolon"
        assert_eq!(
            basic_credentials(&with_authorization("Basic bm9jb2xvbg==")),
            None
        );
        assert_eq!(basic_credentials(&Request::default()), None);
    }

    #[test]
    fn the_challenge_is_a_401_naming_the_basic_scheme() {
        let response = challenge();
        assert_eq!(response.status, 401);
        let (name, value) = &response.headers[0];
        assert_eq!(name, "WWW-Authenticate");
        assert!(value.starts_with("Basic realm=\"ringcast\""));
    }
}
