//! Issuing bearer tokens, an identity provider's job: the services only check them
//! (`ordermesh_platform::auth`). `ordermesh token` issues them for the quick start, and the tests
//! issue theirs here, so the services link no signing code.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ordermesh_platform::auth::{AuthError, Claims, Secret, key_bytes};

/// Signs tokens with the key the services check them with (HS256, as they require).
pub struct TokenIssuer {
    key: EncodingKey,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenIssuer([redacted])")
    }
}

impl TokenIssuer {
    /// An issuer with the key from setting `setting`, if long enough (the services' own rule).
    pub fn new(setting: &'static str, secret: &Secret) -> Result<Self, AuthError> {
        Ok(Self {
            key: EncodingKey::from_secret(key_bytes(setting, secret)?),
        })
    }

    /// A token for `subject` granting `scopes`, valid for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        scopes: &[&str],
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: subject.to_owned(),
            exp: (now + ttl).as_secs(),
            scope: scopes.join(" "),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use ordermesh_platform::auth::{AuthKey, ORDERS_WRITE};

    use super::*;

    #[test]
    fn a_short_key_is_refused_and_the_key_never_prints() {
        let short = TokenIssuer::new("--key", &Secret::from("short")).expect_err("short");
        assert!(short.to_string().contains("--key is 5 bytes"), "{short}");
        let secret = Secret::from("hunter2hunter2hunter2hunter2hunter2");
        let issuer = TokenIssuer::new("--key", &secret).expect("long enough");
        assert!(!format!("{issuer:?}").contains("hunter2"));
        // The services accept the same key.
        AuthKey::new("ORDER_AUTH_KEY", &secret).expect("the same rule");
        let token = issuer
            .issue("ada", &[ORDERS_WRITE], Duration::from_secs(60))
            .expect("token");
        assert_eq!(
            token.split('.').count(),
            3,
            "a JWT: header, claims, signature"
        );
    }
}
