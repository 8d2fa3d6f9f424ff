//! Sidecar tokens (push API) and reader credentials (REST API, dashboard).
//! Secrets are compared in constant time and never logged.

use std::time::SystemTime;

use subtle::ConstantTimeEq;

use super::config::{ApiAuth, TokenEntry};

/// Why a push call was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` header.
    Missing,
    /// No sidecar has this token.
    Unknown,
    /// The token's `expires_at` has passed.
    Expired,
}

impl AuthError {
    /// Message for the caller (names no secret).
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing bearer token (authorization: Bearer <token>)",
            AuthError::Unknown => "invalid token",
            AuthError::Expired => "token expired",
        }
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The token after `Bearer ` in an authorization header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Finds the sidecar a token belongs to. Every entry is compared, so the time
/// taken does not depend on which one (if any) matches.
pub fn sidecar<'a>(
    tokens: &'a [TokenEntry],
    header: Option<&str>,
    now: SystemTime,
) -> Result<&'a TokenEntry, AuthError> {
    let Some(presented) = bearer(header) else {
        return Err(AuthError::Missing);
    };
    let mut found = None;
    for t in tokens {
        if ct_eq(t.token.expose(), presented) && found.is_none() {
            found = Some(t);
        }
    }
    let entry = found.ok_or(AuthError::Unknown)?;
    if entry.expires_at.is_some_and(|at| now >= at) {
        return Err(AuthError::Expired);
    }
    Ok(entry)
}

/// Whether an HTTP authorization header grants read access.
pub fn reader(auth: &ApiAuth, header: Option<&str>) -> bool {
    match auth {
        ApiAuth::Anonymous => true,
        ApiAuth::Bearer(token) => bearer(header).is_some_and(|t| ct_eq(token.expose(), t)),
        ApiAuth::Basic { username, password } => {
            let Some(v) = header.map(str::trim) else {
                return false;
            };
            let Some((scheme, b64)) = v.split_once(' ') else {
                return false;
            };
            if !scheme.eq_ignore_ascii_case("basic") {
                return false;
            }
            use base64::Engine;
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                return false;
            };
            let Ok(text) = String::from_utf8(raw) else {
                return false;
            };
            let Some((u, p)) = text.split_once(':') else {
                return false;
            };
            // Both compared, always, so timing tells nothing about which was wrong.
            let user_ok = ct_eq(username, u);
            let pass_ok = ct_eq(password.expose(), p);
            user_ok & pass_ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::read_secret;
    use std::io::Write;
    use std::time::Duration;

    fn secret(text: &str) -> crate::config::Secret {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        read_secret("t", f.path()).unwrap()
    }

    fn entry(name: &str, env: &str, tok: &str, expires_at: Option<SystemTime>) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            environment: env.into(),
            cluster: None,
            token: secret(tok),
            expires_at,
        }
    }

    #[test]
    fn sidecar_tokens() {
        let now = SystemTime::now();
        let tokens = vec![
            entry("dev", "dev", "aaa", None),
            entry("prod", "prod", "bbb", Some(now + Duration::from_secs(60))),
            entry("old", "prod", "ccc", Some(now - Duration::from_secs(1))),
        ];
        assert_eq!(
            sidecar(&tokens, Some("Bearer aaa"), now).unwrap().name,
            "dev"
        );
        assert_eq!(
            sidecar(&tokens, Some("bearer  bbb "), now).unwrap().name,
            "prod"
        );
        assert_eq!(sidecar(&tokens, None, now).unwrap_err(), AuthError::Missing);
        assert_eq!(
            sidecar(&tokens, Some("Basic aaa"), now).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            sidecar(&tokens, Some("Bearer aa"), now).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            sidecar(&tokens, Some("Bearer ccc"), now).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn readers() {
        use base64::Engine;
        let basic = ApiAuth::Basic {
            username: "sre".into(),
            password: secret("pw"),
        };
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(reader(&basic, Some(&enc("sre:pw"))));
        assert!(!reader(&basic, Some(&enc("sre:px"))));
        assert!(!reader(&basic, Some(&enc("srx:pw"))));
        assert!(!reader(&basic, Some("Basic !!!")));
        assert!(!reader(&basic, None));
        let bearer_auth = ApiAuth::Bearer(secret("tok"));
        assert!(reader(&bearer_auth, Some("Bearer tok")));
        assert!(!reader(&bearer_auth, Some("Bearer tok2")));
        assert!(reader(&ApiAuth::Anonymous, None));
    }
}
