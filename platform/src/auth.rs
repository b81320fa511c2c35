//! Bearer tokens on the public APIs: JWTs signed with a configured key (HS256), with an expiry and
//! scopes (`orders:write` to place orders, `orders:read` and `notifications:read` to look).
//!
//! A missing, expired or forged token is UNAUTHENTICATED; a valid token without the method's scope
//! is PERMISSION_DENIED. Only the API service is wrapped: health and reflection stay open. Without a
//! key configured the API is open, as in the quick start; a service says so loudly when that API is
//! reachable off loopback.
//!
//! The services only check tokens. Issuing them is an identity provider's job; in the quick start
//! and the tests that is the runner (`ordermesh token`, `ordermesh_runner::tokens`), which signs
//! the [`Claims`] defined here with the same key.

use std::{
    fmt,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tonic::{Status, server::NamedService};
use tower::{Layer, Service};

/// Place orders.
pub const ORDERS_WRITE: &str = "orders:write";
/// Read orders.
pub const ORDERS_READ: &str = "orders:read";
/// Read notifications.
pub const NOTIFICATIONS_READ: &str = "notifications:read";

/// The shortest key accepted: HS256 with less than 256 bits of key is guessable.
pub const MIN_KEY_BYTES: usize = 32;

/// A secret setting: its value never appears in `Debug` output, so logging a configuration (or an
/// error that carries one) cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{setting} is {len} bytes; use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)")]
    ShortKey { setting: &'static str, len: usize },
}

/// The bytes of key `secret` (from setting `setting`), if long enough: the one rule for a key,
/// whether it checks tokens here or signs them in an issuer.
pub fn key_bytes<'s>(setting: &'static str, secret: &'s Secret) -> Result<&'s [u8], AuthError> {
    let bytes = secret.expose().as_bytes();
    if bytes.len() < MIN_KEY_BYTES {
        return Err(AuthError::ShortKey {
            setting,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// What a token says: the contract between the issuer and the services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// When it expires, in seconds since the Unix epoch.
    pub exp: u64,
    /// The scopes it grants, space-separated (as OAuth 2.0 writes them).
    pub scope: String,
}

/// The key tokens are checked with (the issuer signs them with the same one).
#[derive(Clone)]
pub struct AuthKey {
    decoding: Arc<DecodingKey>,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey([redacted])")
    }
}

impl AuthKey {
    /// The key from setting `setting`, if long enough.
    pub fn new(setting: &'static str, secret: &Secret) -> Result<Self, AuthError> {
        Ok(Self {
            decoding: Arc::new(DecodingKey::from_secret(key_bytes(setting, secret)?)),
        })
    }

    /// The claims of `token` if it is signed with this key and not expired.
    fn verify(&self, token: &str) -> Result<Claims, Status> {
        // HS256 only: a token cannot choose a weaker algorithm (or none) for itself.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| {
                Status::unauthenticated(match error.kind() {
                    ErrorKind::ExpiredSignature => {
                        "the bearer token has expired: get a new one".to_owned()
                    }
                    ErrorKind::InvalidSignature => {
                        "the bearer token's signature is not valid for this service".to_owned()
                    }
                    _ => format!("the bearer token is not a valid token: {error}"),
                })
            })
    }
}

/// Requires a bearer token on every call to the wrapped API service, and the scope each method
/// needs (`rules`: full gRPC path, scope). Without a key, lets everything through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    key: Option<AuthKey>,
    rules: &'static [(&'static str, &'static str)],
}

impl AuthLayer {
    pub fn new(key: Option<AuthKey>, rules: &'static [(&'static str, &'static str)]) -> Self {
        Self { key, rules }
    }

    /// Whether `headers` carry a token that allows `path`.
    fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing bearer token: send the metadata `authorization: Bearer <token>` \
                     (`ordermesh token` makes one)",
                )
            })?;
        let claims = key.verify(token.trim())?;
        let needed = self
            .rules
            .iter()
            .find(|(method, _)| *method == path)
            .map(|(_, scope)| *scope);
        match needed {
            Some(scope) if !claims.scope.split_whitespace().any(|s| s == scope) => {
                Err(Status::permission_denied(format!(
                    "{path} needs the scope {scope}; the token grants {:?}",
                    claims.scope
                )))
            }
            _ => Ok(()),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// An API service behind [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.layer.check(request.uri().path(), request.headers()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            // Refused before the handler: nothing is read, created or charged.
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

/// The router finds the service by the wrapped one's name.
impl<S: NamedService> NamedService for Auth<S> {
    const NAME: &'static str = S::NAME;
}

/// Says loudly that a public API takes calls from anyone, unless only on loopback.
pub fn warn_if_open(service: &str, listener: &tokio::net::TcpListener, key: bool, setting: &str) {
    if let Some(addr) = crate::listeners::off_loopback(listener)
        && !key
    {
        tracing::warn!(
            service,
            %addr,
            "the API takes calls from ANYONE on a non-loopback address: set {setting} to require \
             bearer tokens"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const RULES: &[(&str, &str)] = &[("/pkg.S/Write", ORDERS_WRITE), ("/pkg.S/Read", ORDERS_READ)];

    fn key(secret: &str) -> AuthKey {
        AuthKey::new("TEST_KEY", &Secret(secret.to_owned())).expect("long enough")
    }

    /// A token signed with `secret` (what the runner's issuer makes), expiring `exp`.
    fn signed(secret: &str, scope: &str, exp: u64) -> String {
        let claims = Claims {
            sub: "ada".into(),
            exp,
            scope: scope.into(),
        };
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("token")
    }

    fn in_a_minute() -> u64 {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            + Duration::from_secs(60))
        .as_secs()
    }

    fn headers(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        headers
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_scope() {
        const OURS: &str = "0123456789abcdef0123456789abcdef";
        let layer = AuthLayer::new(Some(key(OURS)), RULES);
        let reader = signed(OURS, ORDERS_READ, in_a_minute());
        assert!(layer.check("/pkg.S/Read", &headers(&reader)).is_ok());
        let denied = layer
            .check("/pkg.S/Write", &headers(&reader))
            .expect_err("read-only");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("orders:write"),
            "{}",
            denied.message()
        );

        let missing = layer
            .check("/pkg.S/Read", &http::HeaderMap::new())
            .expect_err("no token");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("authorization: Bearer"));

        let forged = signed(
            "another key, just as long as ours!",
            ORDERS_WRITE,
            in_a_minute(),
        );
        let bad = layer
            .check("/pkg.S/Write", &headers(&forged))
            .expect_err("other key");
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        assert!(bad.message().contains("signature"), "{}", bad.message());

        let expired = signed(OURS, ORDERS_WRITE, 1);
        let late = layer
            .check("/pkg.S/Write", &headers(&expired))
            .expect_err("expired");
        assert_eq!(late.code(), tonic::Code::Unauthenticated);
        assert!(late.message().contains("expired"), "{}", late.message());

        // No key: open, as in the quick start.
        assert!(
            AuthLayer::new(None, RULES)
                .check("/pkg.S/Write", &http::HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn short_keys_are_refused_and_secrets_never_print() {
        let error = AuthKey::new("ORDER_AUTH_KEY", &Secret("short".into())).expect_err("short");
        assert!(error.to_string().contains("ORDER_AUTH_KEY is 5 bytes"));
        let secret: Secret = "hunter2hunter2hunter2hunter2hunter2"
            .parse()
            .expect("any text");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{:?}", key(secret.expose())).contains("hunter2"));
    }
}
